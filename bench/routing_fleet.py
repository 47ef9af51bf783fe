"""Servers, routers and the load for `python -m bench.routing` (see bench.routing_compare).

Servers: two simulators (`--backend sim`: fresh processes for every run, so every run starts
with empty caches) or two real vLLM servers (`--backend vllm`: started once with
../shared/realvllm/start.sh, `POST /reset_prefix_cache` before every run; or `--vllm-urls` of
servers already running). Routers: fleetproxy once per balancing policy its config accepts,
nginx with `hash $http_x_session_id consistent`, optionally nginx round robin, and the bound (no
router: every request to the first server alone). A router is a fresh process every run.

Every process started here is stopped by its PID: children of `bench.procs.Fleet` (own process
group, SIGTERM then SIGKILL) and vLLM servers through stop.sh with this run's own OUT_DIR, from a
`finally`, on errors, Ctrl-C and SIGTERM alike.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

from bench.client import Client, Result
from bench.procs import Fleet, Proc, nginx_conf, nginx_path
from bench.routing_compare import RUNNING, SUCCESS, WAITING, Sent, Workload, ids_in_log, parse_metrics

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FLEETPROXY_REALVLLM_DIR", ROOT.parent / "shared" / "realvllm"))
VLLM_VENV = Path(os.environ.get("VLLM_VENV", Path.home() / ".cache/fleetproxy/vllm-venv"))
VLLM_PORTS = range(19000, 20000)
# --enforce-eager: no graph compilation (27 s start, not 67 s); a 2048-token context for prompts of
# ~1000 tokens; X-Request-Id honoured and echoed; cached tokens in the usage chunk.
VLLM_ARGS = ("--enforce-eager", "--max-model-len", "2048", "--enable-request-id-headers",
             "--enable-prompt-tokens-details")
READY_TIMEOUT = 30.0


def http_call(url: str, method: str, path: str, body: bytes | None = None, timeout: float = 10.0):
    """(status, body) of one request on a fresh connection."""
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request(method, path, body, {"content-type": "application/json"} if body is not None else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def scrape(url: str) -> dict[str, float]:
    status, body = http_call(url, "GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"{url}/metrics answered {status}")
    return parse_metrics(body.decode(errors="replace"))


def _wait(what: str, ready, proc: Proc | None = None, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if ready():
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s" + (f":\n{proc.tail()}" if proc else ""))


# -- servers --------------------------------------------------------------------------------------


class SimServers:
    """N simulators of vLLM with a prefix cache, restarted for every run (empty caches)."""

    target = "simulators"

    def __init__(self, fleet: Fleet, a):
        self.fleet, self.a = fleet, a
        self.names = [f"sim-{i}" for i in range(a.backends)]
        self.urls: list[str] = []
        self.procs: list[Proc] = []
        self.reset = "fresh simulator processes"
        self.attribution = ("the simulator names itself in every response (`x-sim-backend`), and "
                            "routers pass it through")

    def describe(self) -> str:
        a = self.a
        return (f"{a.backends} fleetproxy simulators (`proxy.sim`) with vLLM's prefix cache model: blocks of "
                f"{a.block_size} words (a simulator token is a word; {a.block_size} words are ~{2 * a.block_size} "
                f"tokens of the tiny model, whose vLLM blocks are 128), "
                f"{a.cache_blocks} blocks (unbounded for these workloads, as real vLLM's 524,288-token "
                f"cache is), TTFT = {a.ttft} s + {a.prefill_per_token} s per uncached prompt word, "
                f"{a.itl} s per token, {a.max_concurrency} running requests per simulator (the rest queue).")

    def open(self) -> None:
        pass

    def prepare(self) -> list[str]:
        a = self.a
        self.urls = []
        for n in self.names:
            extra = ["--block-size", str(a.block_size), "--cache-blocks", str(a.cache_blocks),
                     "--ttft", str(a.ttft), "--itl", str(a.itl), "--prefill-per-token", str(a.prefill_per_token),
                     "--max-concurrency", str(a.max_concurrency), "--model", a.model,
                     "--prompt-tokens-details", "--enable-request-id-headers"]
            self.urls.append(self.fleet.start_sim(n, extra))
        self.procs = self.fleet.procs[-len(self.names):]
        return self.urls

    def log_marks(self) -> list[int]:
        return []

    def served_by(self, sent: list[Sent], marks, wait: float) -> dict[str, str]:
        return {s.rid: s.backend for s in sent if s.backend}

    def finish(self) -> None:
        for p in self.procs:
            self.fleet.stop(p)
        self.procs = []

    def close(self) -> None:
        self.finish()


class VLLMServers:
    """Two real vLLM servers: started here with start.sh (stopped with stop.sh by PID file, in a
    private OUT_DIR) or given with --vllm-urls. Caches emptied with POST /reset_prefix_cache."""

    target = "real vLLM"

    def __init__(self, a):
        self.a = a
        self.urls: list[str] = list(a.vllm_urls or [])
        self.external = bool(self.urls)
        self.logs: list[Path | None] = [Path(p) for p in a.vllm_logs] if a.vllm_logs else [None] * len(self.urls)
        self.out_dir = Path(a.vllm_out) if a.vllm_out else None  # made when servers are started
        self.ports: list[int] = []  # ports we ran start.sh for: each gets a stop.sh
        self.starting: list[subprocess.Popen] = []  # start.sh scripts not yet returned
        self.start_seconds: list[float] = []
        self.reset = "`POST /reset_prefix_cache` on each server (vLLM with `VLLM_SERVER_DEV_MODE=1`), then idle"
        self.attribution = ("each request's own `X-Request-Id` looked up in the servers' request logs "
                            "(`Received request chatcmpl-<id>`), written by each vLLM itself")
        self.version = ""

    @property
    def names(self) -> list[str]:
        return [f"vllm-{i}" for i in range(len(self.urls) or self.a.backends)]

    def describe(self) -> str:
        how = ("already running at " + ", ".join(self.urls)) if self.external else (
            f"started by ../shared/realvllm/start.sh on {', '.join(f'127.0.0.1:{p}' for p in self.ports)} "
            f"(ready after {', '.join(f'{s:.0f} s' for s in self.start_seconds)}), "
            f"flags `{' '.join(VLLM_ARGS + tuple(self.a.vllm_arg))}` on top of start.sh's "
            f"(`--max-model-len` overridden, `--enable-prefix-caching --dtype float32 --enable-log-requests`), "
            f"env `VLLM_SERVER_DEV_MODE=1`" + (", engine threads bound to cores "
                                                + ", ".join(str(i % (os.cpu_count() or 1)) for i in range(len(self.ports)))
                                                if self.a.vllm_bind == "split" else
                                                ", engine pinning left to vLLM (`VLLM_CPU_OMP_THREADS_BIND=auto`: both on core 0)"))
        return f"{len(self.urls)} real vLLM servers ({self.version or 'vLLM'}, tiny random-weight Llama, CPU), {how}."

    # -- lifecycle

    def open(self) -> None:
        if self.external:
            if len(self.logs) != len(self.urls):
                raise SystemExit("--vllm-logs must name one log per --vllm-urls server")
        else:
            self._start_all()
        for u in self.urls:
            status, body = http_call(u, "GET", "/version")
            if status == 200:
                self.version = "vLLM " + json.loads(body).get("version", "?")
        # One request each before the first run: the first request after start is slower.
        for u in self.urls:
            body = json.dumps({"model": self.a.model, "messages": [{"role": "user", "content": "warm up"}],
                               "max_tokens": 4}).encode()
            status, text = http_call(u, "POST", "/v1/chat/completions", body, timeout=120)
            if status != 200:
                raise RuntimeError(f"warm-up request to {u} answered {status}: {text[:300]!r}")

    def _env(self, port: int, index: int) -> dict:
        env = {**os.environ, "PORT": str(port), "OUT_DIR": str(self.out_dir), "VLLM_VENV": str(VLLM_VENV),
               "VLLM_SERVER_DEV_MODE": "1"}
        if self.a.vllm_bind == "split":
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(index % (os.cpu_count() or 1))
        return env

    def _start_all(self) -> None:
        for script in ("start.sh", "stop.sh"):
            if not (SHARED / script).is_file():
                raise SystemExit(f"no {script} in {SHARED}: set FLEETPROXY_REALVLLM_DIR")
        if not (VLLM_VENV / "bin" / "vllm").is_file():
            raise SystemExit(f"vLLM is not installed in {VLLM_VENV}: run {SHARED}/install.sh")
        if self.out_dir is None:
            self.out_dir = Path(tempfile.mkdtemp(prefix="fleetproxy-routing-vllm-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        candidates = [p for p in VLLM_PORTS if _port_free(p) and not (self.out_dir / f"vllm-{p}.pid").exists()]
        args = [*VLLM_ARGS, *self.a.vllm_arg]
        pending = []
        for i in range(self.a.backends):
            # Both start at once: ~40 s for the pair instead of ~30 s each, one after the other.
            port = candidates.pop(0)
            self.ports.append(port)  # before start.sh: stop.sh runs for it whatever happens next
            log = open(self.out_dir / f"start-{port}.out", "wb")  # noqa: SIM115 - closed after start.sh returns
            proc = subprocess.Popen(["bash", str(SHARED / "start.sh"), *args], env=self._env(port, i), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.starting.append(proc)
            pending.append((i, port, time.monotonic(), log, proc))
        failed = []
        for i, port, t0, log, proc in pending:
            rc = proc.wait(timeout=400)
            log.close()
            self.start_seconds.append(time.monotonic() - t0)
            if rc != 0:
                failed.append(f"port {port}: " + (self.out_dir / f"start-{port}.out").read_text(errors="replace")[-1500:])
            self.urls.append(f"http://127.0.0.1:{port}")
            self.logs.append(self.out_dir / f"vllm-{port}.log")
        self.starting = []
        if failed:
            raise RuntimeError("start.sh failed:\n" + "\n".join(failed))
        print(f"vLLM servers up: {', '.join(self.urls)} (logs in {self.out_dir})", flush=True)

    def prepare(self) -> list[str]:
        for u in self.urls:
            for attempt in range(20):
                status, body = http_call(u, "POST", "/reset_prefix_cache")
                if status == 404:
                    raise RuntimeError(f"{u} has no /reset_prefix_cache: start it with VLLM_SERVER_DEV_MODE=1")
                if status == 200 and b"false" not in body.lower():
                    break
                time.sleep(0.5)  # requests still hold blocks: try again
            else:
                raise RuntimeError(f"{u}: /reset_prefix_cache keeps failing: {status} {body[:200]!r}")
        _wait("vLLM idle", lambda: all(
            (m := scrape(u)).get(RUNNING, 0) == 0 and m.get(WAITING, 0) == 0 for u in self.urls), timeout=60)
        return self.urls

    def log_marks(self) -> list[int]:
        return [p.stat().st_size if p is not None and p.exists() else 0 for p in self.logs]

    def served_by(self, sent: list[Sent], marks: list[int], wait: float) -> dict[str, str]:
        """Request id -> server, from the lines each server's log gained during the run."""
        if not any(self.logs):
            return {}
        wanted = {s.rid for s in sent}
        found: dict[str, str] = {}
        deadline = time.monotonic() + wait
        while True:
            for name, path, mark in zip(self.names, self.logs, marks):
                if path is None:
                    continue
                with open(path, "rb") as f:
                    f.seek(mark)
                    for rid in ids_in_log(f.read()):
                        if rid in wanted:
                            # an id seen by two servers is not attributable (a retry would do that)
                            found[rid] = name if found.get(rid, name) == name else "?"
            if len(found) >= len(wanted) or time.monotonic() > deadline:
                return {k: v for k, v in found.items() if v != "?"}
            time.sleep(0.2)

    def finish(self) -> None:
        pass

    def close(self) -> None:
        """stop.sh for every port start.sh ran for, by its PID file in our OUT_DIR (after ending
        any start.sh still waiting for its server, by PID)."""
        for proc in self.starting:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.starting = []
        for port in self.ports if self.out_dir is not None else ():
            env = {**os.environ, "PORT": str(port), "OUT_DIR": str(self.out_dir)}
            try:
                subprocess.run(["bash", str(SHARED / "stop.sh")], env=env, capture_output=True, timeout=60, check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                print(f"stop.sh for port {port} failed: {e}", file=sys.stderr)
        self.ports = []


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no clash
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# -- routers --------------------------------------------------------------------------------------


@dataclass
class Router:
    key: str  # what --routers matches
    name: str  # shown in tables
    kind: str  # fleetproxy | nginx-hash | nginx-rr | bound
    balance: dict | None = None


def fleetproxy_policies() -> tuple[list[str], str | None]:
    """The policy names `proxy.config.Balance.policy` accepts, read now (a policy added to the
    Literal is picked up without touching the bench), and the config's default policy."""
    try:
        from proxy.config import Balance

        names = [str(n) for n in typing.get_args(typing.get_type_hints(Balance)["policy"])]
    except Exception:  # noqa: BLE001 - a proxy mid-edit must not stop the nginx and bound rows
        return [], None
    try:
        default = str(Balance().policy)
    except Exception:  # noqa: BLE001 - only a label
        default = None
    return names, default


def all_routers(optional: bool = False) -> list[Router]:
    names, default = fleetproxy_policies()
    # the default policy first: it is the one a user gets
    names.sort(key=lambda n: n != default)
    routers = [Router(f"fleetproxy:{n}", f"fleetproxy {n}" + (" (default)" if n == default else ""),
                      "fleetproxy", {"policy": n}) for n in names]
    routers.append(Router("nginx-hash", "nginx hash $http_x_session_id consistent", "nginx-hash"))
    if optional:
        routers.append(Router("nginx-rr", "nginx round robin", "nginx-rr"))
    routers.append(Router("bound", BOUND, "bound"))
    return routers


BOUND = "bound: one server alone"


def select_routers(wanted: str | None) -> list[Router]:
    """All routers (nginx round robin only when asked), or those whose key contains a
    comma-separated substring; the bound always (the hit-rate reference)."""
    if not wanted:
        return all_routers()
    words = [w.strip() for w in wanted.split(",") if w.strip()]
    picked = [r for r in all_routers(optional=True) if r.kind == "bound" or any(w in r.key for w in words)]
    return picked


def nginx_hash_conf(prefix: str, port: int, backends: list[str], binary: str, hashed: bool) -> str:
    """bench.procs' nginx (upstream keep-alive, no buffering), balanced by the session header's
    consistent hash (ketama) when ``hashed``; nginx wants the method before `keepalive`."""
    conf = nginx_conf(prefix, port, backends, 1, binary)
    if hashed:
        head = "    upstream fleet {\n"
        if head not in conf:
            raise RuntimeError("bench.procs.nginx_conf changed: no 'upstream fleet {' block to balance")
        conf = conf.replace(head, head + "        hash $http_x_session_id consistent;\n", 1)
    return conf


class Running:
    """A router started for one run (``admin``: fleetproxy's admin URL, else None)."""

    def __init__(self, url: str, procs: list[Proc], admin: str | None = None):
        self.url, self.procs, self.admin = url, procs, admin

    def decisions(self) -> dict | None:
        """fleetproxy's routing decisions so far (cache_aware counts them), or None."""
        if self.admin is None:
            return None
        try:
            status, body = http_call(self.admin, "GET", "/admin/backends", timeout=5)
            clusters = json.loads(body).get("clusters", []) if status == 200 else []
        except (OSError, ValueError):
            return None
        return next((c["decisions"] for c in clusters if "decisions" in c), None)


def start_router(fleet: Fleet, r: Router, names: list[str], urls: list[str], a) -> Running:
    if r.kind == "bound":
        return Running(urls[0], [])
    if r.kind == "fleetproxy":
        port, admin = fleet.port(), fleet.port()
        cfg = {
            "listen": f"127.0.0.1:{port}",
            "admin_listen": f"127.0.0.1:{admin}",
            "workers": 1,
            "backends": [{"url": u, "name": n} for n, u in zip(names, urls)],
            "balance": r.balance,
            # A starved 2-core box answers /health slowly: a flapping check is not what we measure.
            "health": {"interval": a.health_interval, "timeout": 5.0, "unhealthy_threshold": 5},
            "log_level": "warning",
        }
        path = os.path.join(fleet.dir, f"{r.key.replace(':', '-')}.yaml")
        with open(path, "w") as f:
            json.dump(cfg, f)  # JSON is YAML
        proc = fleet.spawn(r.key.replace(":", "-"), [sys.executable, "-m", "proxy", "--config", path], pin=False)

        def ready():
            status, body = http_call(f"http://127.0.0.1:{admin}", "GET", "/admin/backends", timeout=2)
            backends = json.loads(body).get("backends", []) if status == 200 else []
            return len(backends) == len(urls) and all(b.get("healthy") for b in backends)

        _wait(r.name, ready, proc)
        return Running(f"http://127.0.0.1:{port}", [proc], f"http://127.0.0.1:{admin}")
    binary = nginx_path()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    prefix = os.path.join(fleet.dir, r.key)
    os.makedirs(prefix, exist_ok=True)
    port = fleet.port()
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_hash_conf(prefix, port, urls, binary, r.kind == "nginx-hash"))
    proc = fleet.spawn(r.key, [binary, "-c", conf, "-p", prefix], pin=False)
    proc.error_log = os.path.join(prefix, "error.log")
    url = f"http://127.0.0.1:{port}"
    _wait(r.name, lambda: http_call(url, "GET", "/health", timeout=2)[0] == 200, proc)
    return Running(url, [proc])


# -- the load -------------------------------------------------------------------------------------


async def drive(url: str, w: Workload, tag: str, think: float, timeout: float) -> tuple[list[Sent], float]:
    """``concurrency`` users; each takes the next session and plays its turns in order, one
    request at a time on a keep-alive connection. Every request gets its own X-Request-Id."""
    client = Client(url, timeout)
    queue = list(reversed(w.sessions))
    sent: list[Sent] = []

    async def user():
        while queue:
            s = queue.pop()
            for t, body in enumerate(s.bodies):
                rid = f"{tag}-{s.index}-{t}"
                head = client.head("/v1/chat/completions", body, {"X-Session-ID": s.id, "X-Request-Id": rid})
                res = Result(perf_counter())
                await client.stream(head, body, res)
                ttft = (res.first - res.start) * 1000 if res.first else None
                error = res.error or (None if res.tokens else "no content token")
                sent.append(Sent(s.index, t, rid, ttft, error, res.backend.decode(errors="replace")))
                if think:
                    await asyncio.sleep(think)

    t0 = perf_counter()
    try:
        await asyncio.gather(*(user() for _ in range(w.spec.concurrency)))
    finally:
        client.close()
    return sent, perf_counter() - t0


def run_load(url: str, w: Workload, tag: str, a) -> tuple[list[Sent], float]:
    try:
        import uvloop

        return uvloop.run(drive(url, w, tag, a.think, a.request_timeout))
    except ImportError:
        return asyncio.run(drive(url, w, tag, a.think, a.request_timeout))


def wait_counted(servers, names: list[str], urls: list[str], before: dict, expected: int, timeout: float = 10.0):
    """Scrape the servers until their success counters account for ``expected`` requests (a
    counter may lag the end of the stream by an engine step), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        after = {n: scrape(u) for n, u in zip(names, urls)}
        done = sum(after[n].get(SUCCESS, 0) - before[n].get(SUCCESS, 0) for n in names)
        if done >= expected or time.monotonic() > deadline:
            return after
        time.sleep(0.2)
