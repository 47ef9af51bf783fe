"""The scenarios: what load, from which driver, for how long, in the full run and in the smoke.

A scenario has one or more steps (scenario c: one per offered rate); each step runs against every
target, `repeat` times, interleaved (see bench/runner.py). Durations are seconds per run; the
full run's are sized so that `make bench` ends well under 15 minutes on a 2-core machine with
three targets and two repeats:

    a  3 targets x 2 x (10 s + warm-up)              ~  70 s
    b  3 targets x 2 x (10 s + warm-up)              ~  70 s
    c  2 rates x 3 targets x 2 x (15 s + 1 s + drain) ~ 210 s
    d  3 targets x 2 x (20 s + 2 s + drain)           ~ 145 s
    e  (policies + nginx) x 2 x (15 s + 2 s + drain)  ~ 150 s with three policies
    f  3 targets x 2 x (8 s + locust's start-up)      ~  60 s
    g  3 targets x 2 x (10 s + warm-up)              ~  70 s

Scenario f runs scenario d's user under locust (bench/locustfile.py, bench/locust_run.py); without
locust installed it is skipped with a note, the way a missing nginx is (`pip install -e '.[bench]'`).

Simulated timing for c, d and e: 50 ms to the first token and 10 ms between tokens, fixed per
request through the simulator's x-sim-ttft / x-sim-itl headers, so whatever the targets add on
top is theirs.
"""

from __future__ import annotations

import importlib.util
import typing
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    label: str  # shown in tables: "", "100 req/s", ...
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    key: str  # the letter used on the command line
    name: str  # file names: <date>-<key>-<name>.md
    title: str
    driver: str  # wrk | openloop | chat | locust
    duration: float  # s per run, full
    smoke_duration: float  # s per run, --smoke
    params: dict  # driver parameters (full run)
    smoke_params: dict  # overrides for --smoke
    steps: tuple[Step, ...] = (Step(""),)
    smoke_steps: tuple[Step, ...] | None = None
    warmup: float = 1.0  # s of load before each target's measured runs (wrk) or each run (asyncio)
    metric: str = "latency_ms"  # the latency the main table and the ratios use
    metric_label: str = "latency"  # column heads: "latency p99", "TTFT p99"
    generator: str = ""  # said in the report: which tool made the load, and how

    @property
    def slug(self) -> str:
        return f"{self.key}-{self.name}"


def _closed_loop(key: str, name: str, title: str, lua: str, about: str, warmup: float = 2.0) -> Scenario:
    """A scenario wrk drives: one thread, 32 connections, a bench/lua script."""
    return Scenario(
        key=key, name=name, title=title, driver="wrk", duration=10, smoke_duration=1, warmup=warmup,
        params={"lua": lua, "connections": 32}, smoke_params={},
        generator=f"wrk, closed loop, 1 thread, 32 connections, bench/lua/{lua} {about}",
    )


SIM_TIMING = {"ttft": 0.05, "itl": 0.01, "tokens": "16-64"}
SMOKE_TIMING = {"tokens": "8-16"}  # short answers: the smoke waits less for the last streams

SCENARIOS = (
    _closed_loop("a", "throughput", "Max throughput, non-streaming chat completions", "chat.lua",
                 "(16 tokens, JSON)"),
    _closed_loop("b", "stream", "Streaming SSE, 16-64 tokens, one event per write, no delays (framing throughput)",
                 "stream.lua", "(stream: true, 16-64 tokens); latency is to the end of the stream"),
    Scenario(
        key="c", name="openloop", title="Realistic streaming at fixed request rates (open loop)",
        driver="openloop", duration=15, smoke_duration=1.5, warmup=1.0,
        params=dict(SIM_TIMING), smoke_params=dict(SMOKE_TIMING),
        steps=(Step("50 req/s", {"rate": 50}), Step("400 req/s", {"rate": 400})),
        smoke_steps=(Step("50 req/s", {"rate": 50}),),
        metric="ttft_ms", metric_label="TTFT",
        generator="bench/openloop.py: own asyncio + uvloop generator, Poisson arrivals (seeded, the "
                  "same schedule for every target), each request timed from when it was due, so "
                  "there is no coordinated omission",
    ),
    Scenario(
        key="d", name="chat", title="Chat users: multi-turn streaming sessions sharing a system prompt",
        driver="chat", duration=20, smoke_duration=2.0, warmup=2.0,
        params={**SIM_TIMING, "users": 64, "think": 1.0, "turns": "2-6"},
        smoke_params={**SMOKE_TIMING, "users": 16, "think": 0.3},
        metric="ttft_ms", metric_label="TTFT",
        generator="bench/chat_users.py: own asyncio users (locust's model: a fixed population with "
                  "exponential think time), sessions of a few turns, each turn posting the whole "
                  "conversation after a shared ~3 KB system prompt",
    ),
    Scenario(
        key="e", name="routing", title="Routing quality: session affinity and load spread per policy",
        driver="chat", duration=15, smoke_duration=1.5, warmup=2.0,
        params={**SIM_TIMING, "users": 48, "think": 0.5, "turns": "3-6", "backends": 3},
        smoke_params={**SMOKE_TIMING, "users": 12, "think": 0.3},
        metric="ttft_ms", metric_label="TTFT",
        generator="bench/chat_users.py against 3 simulators; the x-sim-backend header of each "
                  "answer says which one served it",
    ),
    Scenario(
        key="f", name="locust", title="Chat users under locust (scenario d's user; locust's own numbers)",
        driver="locust", duration=8, smoke_duration=2.0, warmup=0.0,
        params={"users": 32, "rate": 16, "ttft": SIM_TIMING["ttft"], "itl": SIM_TIMING["itl"]},
        smoke_params={"users": 8, "rate": 8},
        metric="ttft_ms", metric_label="TTFT",
        generator="locust, headless (bench/locust_run.py), bench/locustfile.py's chat user: 2-6 turns a "
                  "session, 16-64 tokens, 0.5-1.5 s think time; every figure in this report is locust's, "
                  "read from the CSV files it wrote (CPU µs/req: the proxy's, over the locust run)",
    ),
    _closed_loop("g", "longprompt", "Max throughput, non-streaming chat completions with a 32 KiB prompt",
                 "chat_long.lua", "(a system prompt and 32 KiB of user text: what each byte of a RAG-sized "
                 "request costs)", warmup=1.0),
)


def by_key(keys: str | None) -> list[Scenario]:
    if not keys:
        return list(SCENARIOS)
    wanted, out = [k.strip() for k in keys.split(",") if k.strip()], []
    for k in wanted:
        match = [s for s in SCENARIOS if k in (s.key, s.name, s.slug)]
        if not match:
            raise ValueError(f"unknown scenario {k!r}; known: "
                             + ", ".join(f"{s.key} ({s.name})" for s in SCENARIOS))
        out.extend(m for m in match if m not in out)
    return out


# -- scenario e's hook --------------------------------------------------------------------------
#
# Scenario e runs one fleetproxy per balancing policy, each with a generated config file that
# holds only its policy (`routing_configs`; the backends come as flags, which override the file).
# The policy names are read from the config schema (`proxy.config.Balance.policy`, a Literal);
# if the balancer's configuration moves, this function is the one place to follow it. Without
# `proxy/routing/policies.py` the scenario is skipped with a note.


def routing_configs() -> list[tuple[str, dict]] | None:
    """[(policy name, config mapping that selects it)], or None while there is no balancer."""
    if importlib.util.find_spec("proxy.routing.policies") is None:
        return None
    try:
        from proxy.config import Balance

        names = typing.get_args(typing.get_type_hints(Balance)["policy"])
    except (ImportError, KeyError, AttributeError, TypeError, NameError):
        names = ()
    if not names:
        return [("default", {})]
    return [(str(n), {"balance": {"policy": str(n)}}) for n in names]


def skip_reason(s: Scenario) -> str | None:
    if s.driver == "wrk":
        from . import wrk

        if wrk.binary() is None:
            return "wrk is not installed (apt-get install wrk)"
    if s.driver == "locust":
        from .locust_run import missing

        return missing()
    if s.key == "e" and routing_configs() is None:
        return "proxy/routing/policies.py does not exist yet: routing quality needs the balancer"
    return None
