"""Real vLLM (the CPU build in ../shared/realvllm) behind fleetproxy, on loopback.

The suite runs only when asked: `FLEETPROXY_REALVLLM=1` (what .ci/realvllm.sh
sets) or a `-m realvllm` selection. `make test` collects it and skips it with
one line saying why, so the default run stays fast and starts no vLLM.

When asked but the shared scripts or the vLLM install are missing, it skips
with the reason printed; with CI=true that is an error instead, never a pass.

Servers are started with the shared start.sh (PID files in a private OUT_DIR,
ports from 18600-18699) and stopped with stop.sh by that PID file, so nothing
else on the machine is touched. One server serves the whole session; the
balancer test asks for a second one only once it knows it can use it.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import start_proxy, wait_for  # tests/conftest.py, the root helpers

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FLEETPROXY_REALVLLM_DIR", ROOT.parent / "shared" / "realvllm"))
VENV = Path(os.environ.get("VLLM_VENV", Path.home() / ".cache/fleetproxy/vllm-venv"))
PORTS = range(18600, 18700)  # the range this project's vLLM tests may use
# vLLM flags for every server: no graph compilation (27 s start instead of 67 s), and a
# small prefill budget so a long prompt takes tens of engine steps: a client can then
# leave "before the first token" for real (a 900-token prefill is ~15 ms otherwise).
SERVER_ARGS = ("--enforce-eager", "--max-num-batched-tokens", "32")
MODEL = "tiny"
HERE = Path(__file__).resolve().parent

_skip_reason: list[str] = []  # printed once in the terminal summary
_out: list[Path] = []  # the session's OUT_DIR for start.sh, made on first use


def requested(config: pytest.Config) -> bool:
    expr = config.getoption("markexpr", "") or ""
    return (os.environ.get("FLEETPROXY_REALVLLM") == "1"
            or re.search(r"(?<!not )\brealvllm\b", expr) is not None)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [i for i in items if HERE in Path(i.path).parents]
    for item in mine:
        item.add_marker(pytest.mark.realvllm)
    if mine and not requested(config):
        reason = ("real vLLM suite not requested: set FLEETPROXY_REALVLLM=1 or run "
                  ".ci/realvllm.sh")
        _skip_reason.append(reason)
        for item in mine:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter) -> None:
    for reason in dict.fromkeys(_skip_reason):
        terminalreporter.write_line(f"realvllm: skipped: {reason}")


def unavailable() -> str | None:
    """Why real vLLM cannot run here, or None."""
    for script in ("install.sh", "start.sh", "stop.sh"):
        if not (SHARED / script).is_file():
            return f"no {script} in {SHARED}"
    if not (VENV / "bin" / "vllm").is_file():
        return f"vLLM is not installed in {VENV} (run {SHARED}/install.sh)"
    return None


def skip_or_fail(reason: str) -> None:
    _skip_reason.append(reason)
    if in_ci():
        pytest.fail(f"CI=true and real vLLM is unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def call(port: int, method: str, path: str, body=None, headers=None, timeout=30.0):
    """(status, lower-cased headers, body bytes) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        hdrs = {"content-type": "application/json"} if data is not None else {}
        conn.request(method, path, data, {**hdrs, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class VLLM:
    """One real vLLM server started by start.sh; stopped by its PID file only."""

    def __init__(self, port: int, out_dir: Path, extra: tuple[str, ...] = ()) -> None:
        self.port = port
        self.out_dir = out_dir
        self.env = {**os.environ, "PORT": str(port), "OUT_DIR": str(out_dir),
                    "VLLM_VENV": str(VENV)}
        started = time.monotonic()
        proc = subprocess.run(["bash", str(SHARED / "start.sh"), *SERVER_ARGS, *extra],
                              env=self.env, capture_output=True, text=True, timeout=360)
        self.start_seconds = time.monotonic() - started
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"start.sh failed on port {port}:\n{proc.stdout}\n{proc.stderr}")
        self.log = out_dir / f"vllm-{port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        subprocess.run(["bash", str(SHARED / "stop.sh")], env=self.env, capture_output=True,
                       timeout=60)

    def metrics(self) -> dict[str, float]:
        status, _, body = call(self.port, "GET", "/metrics")
        assert status == 200
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def metric(self, name: str) -> float:
        """Sum of a family over its label sets."""
        return sum(v for k, v in self.metrics().items()
                   if k == name or k.startswith(name + "{"))

    def log_has(self, pattern: str) -> bool:
        return re.search(pattern, self.log.read_text(errors="replace")) is not None


def _out_dir() -> Path:
    """Where start.sh puts PID files and logs; kept after the run for a post-mortem."""
    if not _out:
        base = os.environ.get("FLEETPROXY_REALVLLM_OUT")
        _out.append(Path(base) if base else Path(tempfile.mkdtemp(prefix="fleetproxy-realvllm-")))
        _out[0].mkdir(parents=True, exist_ok=True)
    return _out[0]


def _start_server(extra: tuple[str, ...] = ()) -> VLLM:
    reason = unavailable()
    if reason:
        skip_or_fail(reason)
    out_dir = _out_dir()
    for port in PORTS:
        if port_free(port) and not (out_dir / f"vllm-{port}.pid").exists():
            try:
                server = VLLM(port, out_dir, extra)
            except RuntimeError as e:
                if "already in use" in str(e):
                    continue  # someone took it between our check and start.sh's
                raise
            atexit.register(server.stop)  # also when pytest dies early; stop.sh is idempotent
            return server
    skip_or_fail(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


@pytest.fixture(scope="session")
def vllm():
    server = _start_server()
    print(f"\nrealvllm: vLLM on {server.url} healthy after {server.start_seconds:.1f} s, "
          f"log {server.log}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm_b(vllm):
    """A second server, for routing tests; started only when a test asks for it."""
    server = _start_server()
    print(f"\nrealvllm: second vLLM on {server.url} healthy after {server.start_seconds:.1f} s")
    yield server
    server.stop()


def wait_ready(proxy, timeout=30.0) -> None:
    """The proxy's admin /readyz is 200 once its health checks passed a backend."""
    def ready():
        conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()
    if not wait_for(ready, timeout=timeout, interval=0.1):
        raise RuntimeError("fleetproxy never became ready")


@pytest.fixture(scope="session")
def proxy(vllm):
    svc = start_proxy([vllm.url])
    try:
        wait_ready(svc)
        yield svc
    finally:
        svc.stop()


# -- two runs of one request ---------------------------------------------------------------
# vLLM's V1 engine hands a consumer that fell behind several tokens in one delta (its
# per-request output collector merges what piled up), so two runs of one greedy request can
# group the same tokens into different events when the CPU is busy: CI once saw " road? Next"
# in one event straight from vLLM and in two through the proxy. The proxy forwards events as
# they come and cannot cause that; these helpers tell that apart from a real difference.


def regrouped(events: list[dict]) -> tuple:
    """What two runs must share however vLLM grouped the tokens: each choice's whole text,
    and the events with their text taken out, repeats collapsed."""
    texts: dict[int, str] = {}
    rest: list[dict] = []
    for e in events:
        e = json.loads(json.dumps(e))  # a copy to strip
        for choice in e.get("choices") or ():
            delta = choice.get("delta") or choice
            key = "content" if "delta" in choice else "text"
            texts[choice.get("index", 0)] = texts.get(choice.get("index", 0), "") + (delta.get(key) or "")
            delta.pop(key, None)
        if not rest or rest[-1] != e:
            rest.append(e)
    return texts, rest


def same_stream(fetch, canon=regrouped, tries: int = 4):
    """fetch() -> (direct, via). They must be equal on one of `tries` runs; a run where they
    differ only as vLLM's grouping can make them differ (canon equal) is fetched again,
    any other difference fails at once. Returns the equal pair's `via`."""
    for _ in range(tries):
        direct, via = fetch()
        if via == direct:
            return via
        assert canon(via) == canon(direct), "not a regrouping of the same tokens"
    pytest.fail(f"vLLM grouped the tokens differently in each of {tries} runs")


def sse_events(body: bytes) -> list[dict]:
    """The JSON events of a chunked SSE body as it came on the wire."""
    return [json.loads(line[6:]) for line in body.split(b"\n")
            if line.startswith(b"data: {")]
