"""Fixtures: real processes on loopback (simulators, the proxy) and scripted raw backends.

Everything binds 127.0.0.1 on free ports, and every process a test starts is stopped by its PID.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.procs import TEST_PORTS  # noqa: E402
from bench.procs import free_port as _free_port  # noqa: E402


_handed_out = set()


def free_port():
    """A port nothing listens on now, and never one handed out before in this run (a port just
    released may be given again), below the kernel's ephemeral range where there is room: there
    no connection's source port can take it before the process a test starts binds it."""
    return _free_port(TEST_PORTS, _handed_out)


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                # Connected to itself (free_port's pick is an ephemeral port, and TCP's
                # simultaneous open meets it): nothing listens yet, and the port is held.
                if sock.getsockname() != sock.getpeername():
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"port {port} did not open in {timeout}s")


_SERVICES = []  # Services started and not stopped: those a failed test left running stop at the session's end


class Service:
    """A child process we started; stopped by PID, never by name."""

    def __init__(self, args, port, env=None):
        self.port = port
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        _SERVICES.append(self)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig=None):
        if self in _SERVICES:
            _SERVICES.remove(self)
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self):
        if self in _SERVICES:
            _SERVICES.remove(self)
        self.proc.kill()
        self.proc.wait()


def start_sim(*extra, port=None):
    port = port or free_port()
    svc = Service(["-m", "proxy.sim", "--port", str(port), *extra], port)
    wait_port(port, proc=svc.proc)
    return svc


class Proxy(Service):
    def __init__(self, backends, *extra, env=None):
        port, admin = free_port(), free_port()
        args = ["-m", "proxy", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"]
        for b in backends:
            args += ["--backend", b]
        super().__init__(args + list(extra), port, env)
        self.admin_port = admin
        wait_port(admin, proc=self.proc)
        wait_port(port, proc=self.proc)

    def admin(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, json.loads(body)


def start_proxy(backends, *extra, env=None):
    return Proxy([b if isinstance(b, str) else b.url for b in backends], *extra, env=env)


def metrics(url):
    """Prometheus text from url + /metrics as {name{labels}: value}."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric(url, name):
    """Sum of a metric family over its label sets."""
    return sum(v for k, v in metrics(url).items() if k == name or k.startswith(name + "{"))


def wait_for(predicate, timeout=2.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class ScriptedBackend:
    """A raw TCP backend on a thread: records what it receives and answers with a script.

    ``script(request_bytes, sock)`` is called once per request head+body received; it writes
    whatever bytes (valid or not) the test wants, and may close the socket.
    """

    def __init__(self, script):
        self.script = script
        self.requests = []
        self.connections = 0
        self.scrapes = 0  # GET /metrics received (the proxy's load scrapes)
        self.checks = 0  # GET /health received (its health checks)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        counted = False
        conn.settimeout(10)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    if len(rest) < length:
                        break
                    request, buf = head + b"\r\n\r\n" + rest[:length], rest[length:]
                    if request.startswith(b"GET /health "):
                        # The proxy's active health checks: answered and counted, not recorded.
                        self.checks += 1
                        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        return
                    if request.startswith(b"GET /metrics "):
                        # The proxy's load scrapes: counted; a scripted backend has no metrics to give.
                        self.scrapes += 1
                        conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        return
                    if not counted:
                        counted = True
                        self.connections += 1  # connections that carried proxied requests
                    self.requests.append(request)
                    self.script(request, conn)
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self._stop = True
        self.sock.close()


def raw_exchange(port, data, timeout=5.0, read_until_close=True):
    """Send raw bytes to the proxy, return everything read until the peer closes (or timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                break
        return out
    finally:
        s.close()


@pytest.fixture(scope="session", autouse=True)
def _no_service_outlives_the_session():
    # A test that fails between starting a simulator and its own clean-up (a proxy that did not
    # boot, say) would leave the simulator running after pytest: stopped here, by PID.
    yield
    for svc in _SERVICES:
        if svc.proc.poll() is None:
            svc.kill()


@pytest.fixture(scope="session")
def sim():
    svc = start_sim("--name", "sim-a")
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def proxy(sim):
    svc = start_proxy([sim], "--idle-timeout", "2", "--first-byte-timeout", "5")
    yield svc
    svc.stop()
