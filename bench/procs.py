"""The processes under test: simulators, fleetproxy, nginx; started here, stopped here.

A `Fleet` owns a temp dir (logs, the generated nginx.conf, nginx's pid and temp paths) and every
process it starts. Each child gets its own session, so a Ctrl-C in the terminal reaches only the
bench, which then stops the children in reverse order: SIGTERM, a grace period, then SIGKILL to
the child's process group (which also takes any worker it forked). `Fleet.close` runs from a
`finally`, so a failed scenario or an interrupted run leaves nothing behind.

Layout when pinning: servers (simulators and proxies) on `server_cpus`, the load generators on
the others (see `bench.__main__`); the affinity is set before exec, so forked workers inherit it.
"""

from __future__ import annotations

import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field


def quiet_ports(start: int, stop: int) -> range | None:
    """The ports from ``start`` to ``stop``, offsets from the first port of the kernel's
    ephemeral range (negative: below it), or None where they would fall below 10,000 (a host
    whose ephemeral range starts that low).

    A port picked free and bound by a child later (seconds later under valgrind) can be taken
    in between by any outgoing connection's source port if it lies in the ephemeral range
    (32768-60999 by default): the child then exits with EADDRINUSE. Below that range only an
    explicit bind takes a port, and every bind here is of a port picked from these ranges."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    return range(low + start, low + stop) if low + start >= 10_000 else None


# Fleet's ports, bench.procs.free_port's, and the test suite's (tests/conftest.py): apart, so
# that a bench inside the suite never picks a port a test picked and has not bound yet.
PORT_RANGE = quiet_ports(-1000, 0) or range(40000, 41000)  # other tools on this host stay out of it
SPARE_PORTS = quiet_ports(-3000, -1000)
TEST_PORTS = quiet_ports(-22000, -3000)
READY_TIMEOUT = 20.0  # s: a process that is not serving by then failed to start
STOP_GRACE = 8.0  # s: SIGTERM to SIGKILL
NGINX = "/usr/sbin/nginx"


class StartError(RuntimeError):
    """A process did not come up; the message carries the tail of its log."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: str  # its stdout and stderr
    error_log: str | None = None  # a log it writes itself (nginx)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        out = ""
        for path in (self.log, self.error_log):
            try:
                with open(path, errors="replace") as f:
                    out += "".join(f.readlines()[-lines:])
            except (OSError, TypeError):
                pass
        return out


@dataclass
class Target:
    """Where a load generator points: a direct simulator or a proxy in front of the fleet."""

    name: str  # direct | fleetproxy | fleetproxy-pure | nginx
    url: str  # http://127.0.0.1:PORT
    procs: list[Proc] = field(default_factory=list)  # the proxy's processes (none for direct)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def free_port(ports: range | None = SPARE_PORTS, taken: set | None = None) -> int:
    """A port free on 127.0.0.1 right now: one of ``ports`` (the kernel's pick where there is
    no such range), not one of ``taken``, which it joins."""
    taken = _spare_taken if taken is None else taken
    while True:
        if ports is None or len(taken) >= len(ports):
            port = 0  # the kernel's pick
        else:
            port = random.choice(ports)
            if port in taken:
                continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                taken.add(port)  # in use now: not asked again
                continue
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


_spare_taken: set = set()


def wait_port(port: int, popen: subprocess.Popen, timeout: float = 20.0) -> None:
    """Return once ``port`` accepts; fail at once if ``popen`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            err = popen.stderr.read().decode(errors="replace")[-2000:] if popen.stderr else ""
            raise RuntimeError(f"process exited with {popen.returncode}: {err}")
        if _accepts(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open in {timeout:g} s")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            return not _self_connected(sock)
    except OSError:
        return False


def _self_connected(sock: socket.socket) -> bool:
    """Whether ``sock`` is connected to itself: where a port picked free is in the ephemeral
    range (no room below it), a connection to it from that same port while nothing listens
    there meets itself (TCP's simultaneous open), reads back what it wrote, and holds the port
    the process is about to bind."""
    return sock.getsockname() == sock.getpeername()


def pin(cpus) -> list[str]:
    """The command prefix that keeps a process on ``cpus`` (none where there is nothing to pin,
    or no taskset to pin with)."""
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus and shutil.which("taskset") else []


def nginx_path() -> str | None:
    return NGINX if os.access(NGINX, os.X_OK) else shutil.which("nginx")


class Fleet:
    def __init__(self, server_cpus: set[int] | None = None, proxy_cpus: set[int] | None = None):
        self.server_cpus = server_cpus
        self.proxy_cpus = proxy_cpus or server_cpus  # the proxies' own cores (--proxy-cpus), or the servers'
        self.dir = tempfile.mkdtemp(prefix="fleetproxy-bench-")
        self.procs: list[Proc] = []
        self._ports: set[int] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything still running, newest first. Safe to call twice."""
        while self.procs:
            self.stop(self.procs[-1])
        shutil.rmtree(self.dir, ignore_errors=True)

    def stop(self, proc: Proc) -> None:
        if proc in self.procs:
            self.procs.remove(proc)
        p = proc.popen
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        # The child leads its own process group (start_new_session): take any straggler with it.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(2.0)
        except subprocess.TimeoutExpired:
            pass

    def spawn(self, name: str, argv: list[str], env: dict | None = None, pin: bool = True,
              proxy: bool = False) -> Proc:
        log = os.path.join(self.dir, f"{name}.log")
        cpus = (self.proxy_cpus if proxy else self.server_cpus) if pin else None
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, cwd=_repo_root(),
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def port(self) -> int:
        """A free port in PORT_RANGE, not handed out before by this fleet."""
        candidates = list(PORT_RANGE)
        random.shuffle(candidates)  # two benches at once rarely collide
        for port in candidates:
            if port in self._ports:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            self._ports.add(port)
            return port
        raise StartError(f"no free port in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")

    # -- the processes -----------------------------------------------------------------------

    def start_sim(self, name: str, extra: list[str] = ()) -> str:
        def start():
            port = self.port()
            proc = self.spawn(name, [sys.executable, "-m", "proxy.sim", "--port", str(port), "--name", name,
                                     "--max-concurrency", "8192", *extra])
            return proc, f"http://127.0.0.1:{port}", lambda: "listening on" in proc.tail()

        return self.launch(start)

    def start_traced(self, name: str, argv, timeout: float) -> Proc:
        """``argv(port)`` (a command under valgrind, say) once it accepts on ``port``: fleetproxy,
        nginx or the floor, which `launch` tries again on another port if theirs was taken."""

        def start():
            port = self.port()
            proc = self.spawn(name, argv(port), env={**os.environ, "PYTHONHASHSEED": "0"}, pin=False)
            return proc, (proc, port), lambda: _accepts(port)

        return self.launch(start, timeout)

    def launch(self, start, timeout: float = READY_TIMEOUT):
        """Run ``start`` (-> process, what to return, readiness test), again on a port clash.

        The port test in `port` and the child's bind are not atomic: where PORT_RANGE lies in
        the ephemeral range (no room below it), a connection opened in between can take the
        port. Such a start fails with EADDRINUSE and is tried again on another port."""
        for attempt in range(4):
            proc, value, ready = start()
            try:
                _wait(proc, ready, timeout)
                return value
            except StartError as e:
                if attempt == 3 or "in use" not in str(e):
                    raise
                self.stop(proc)
        raise AssertionError("unreachable")

    def start_fleetproxy(self, name: str, backends: list[str], workers: int = 1,
                         config: dict | None = None, pure: bool = False, config_file: str | None = None) -> Target:
        """fleetproxy in front of ``backends``; ``config`` ({section: {key: value}}) becomes a
        TOML file passed with --config, for settings that have no flag (scenario e's policy);
        ``config_file`` is passed as it is (bench/configs)."""
        env = dict(os.environ)
        env.pop("FLEETPROXY_PURE", None)
        if pure:
            env["FLEETPROXY_PURE"] = "1"
        flags = ["--log-level", "warning"]
        if config:
            path = os.path.join(self.dir, f"{name}.toml")
            with open(path, "w") as f:
                f.write(_toml(config))
            flags += ["--config", path]
        if config_file:
            flags += ["--config", os.path.abspath(config_file)]
        if workers > 1:
            flags += ["--workers", str(workers)]
        for b in backends:
            flags += ["--backend", b]

        def start():
            port, admin = self.port(), self.port()
            proc = self.spawn(name, [sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}",
                                     "--admin-listen", f"127.0.0.1:{admin}", *flags], env=env, proxy=True)
            target = Target(name, f"http://127.0.0.1:{port}", [proc])
            # Ready: the admin port says so and a request through the data port gets an answer.
            return proc, target, lambda: _get(admin, "/readyz") == 200 and _get(port, "/health") == 200

        return self.launch(start)

    def start_floor(self, name: str, backends: list[str]) -> Target:
        """bench/floor.py in front of the first backend: uvloop's Protocol callbacks, no proxy."""

        def start():
            port = self.port()
            proc = self.spawn(name, [sys.executable, "-m", "bench.floor", "--listen", f"127.0.0.1:{port}",
                                     "--backend", backends[0]], proxy=True)
            target = Target(name, f"http://127.0.0.1:{port}", [proc])
            return proc, target, lambda: _get(port, "/health") == 200

        return self.launch(start)

    def start_nginx(self, name: str, backends: list[str], workers: int = 1) -> Target:
        binary = nginx_path()
        if binary is None:
            raise StartError("nginx is not installed")
        prefix = os.path.join(self.dir, name)
        os.makedirs(prefix, exist_ok=True)
        conf = os.path.join(prefix, "nginx.conf")

        def start():
            port = self.port()
            with open(conf, "w") as f:
                f.write(nginx_conf(prefix, port, backends, workers, binary))
            proc = self.spawn(name, [binary, "-c", conf, "-p", prefix], proxy=True)
            proc.error_log = os.path.join(prefix, "error.log")
            target = Target(name, f"http://127.0.0.1:{port}", [proc])
            return proc, target, lambda: _get(port, "/health") == 200

        return self.launch(start)


def nginx_conf(prefix: str, port: int, backends: list[str], workers: int, binary: str = NGINX) -> str:
    """nginx as a reverse proxy for the same fleet, configured as one would for streaming LLMs:
    HTTP/1.1 upstream keep-alive, no buffering either way, X-Forwarded-* like fleetproxy."""
    servers = "\n".join(f"        server {b.removeprefix('http://')};" for b in backends)
    # nginx creates every temp path at start, each module's default under /var/lib/nginx:
    # point the ones this build has into the prefix.
    try:
        built = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, subprocess.TimeoutExpired):
        built = ""
    temp = [f"client_body_temp_path {prefix}/client_body;", f"proxy_temp_path {prefix}/proxy;"]
    for module in ("fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in built:
            temp.append(f"{module}_temp_path {prefix}/{module};")
    temp_paths = "\n    ".join(temp)
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""# Generated by fleetproxy's bench (bench/procs.py); lives only as long as the run.
{user}daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 16384;
}}

http {{
    access_log off;
    {temp_paths}
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 32m;

    upstream fleet {{
{servers}
        keepalive 256;
        keepalive_requests 1000000;
        # Below the backend's own idle close (uvicorn's 5 s, which the simulator keeps too),
        # as in front of vLLM it must be, and the same as fleetproxy's pool_idle.
        keepalive_timeout 4s;
    }}

    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://fleet;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


def _toml(config: dict) -> str:
    """A two-level mapping of strings, numbers and booleans as TOML: all the bench needs."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    for section, table in config.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _get(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.connect()
        if _self_connected(conn.sock):
            return None  # nothing listens there yet
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _wait(proc: Proc, ready, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise StartError(f"{proc.name} exited with status {proc.popen.returncode}:\n{proc.tail()}")
        if ready():
            return
        time.sleep(0.05)
    raise StartError(f"{proc.name} not ready after {timeout:.0f} s:\n{proc.tail()}")
