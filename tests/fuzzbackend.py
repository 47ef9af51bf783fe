"""The live half of tests/test_fuzz.py: a recording endpoint, the proxy in front of it, and a
raw client's reading of what comes back.

``RecordingBackend`` is a raw asyncio server on its own thread. It reads every byte the proxy
sends with the strict parser (wirefuzz.parse_upstream), records each request by the client
address the proxy put in X-Forwarded-For, answers 200, and keeps every ambiguity it meets in
``violations`` (then closes that connection: a lenient endpoint might have read on).
"""

import asyncio
import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from conftest import ROOT, free_port, wait_port
from wirefuzz import Ambiguous, check_marks, parse_upstream

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\n"
PROBE = b"/fuzz-probe"


@dataclass
class Forwarded:
    method: bytes
    target: bytes
    fields: list
    body: bytes
    xff: bytes


class RecordingBackend:
    def __init__(self):
        self.received = []  # Forwarded, in arrival order
        self.violations = []  # (reason, the bytes of that connection so far)
        self.unmarked = set()  # client addresses whose input a mutation may have unmarked
        self.loop = asyncio.new_event_loop()
        self.server = None
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(10)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        started.set()
        self.loop.run_forever()

    async def _serve(self, reader, writer):
        buf = b""
        seen = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                buf += data
                seen += data
                while True:
                    try:
                        got = parse_upstream(buf)
                    except Ambiguous as err:
                        self.violations.append((str(err), seen[-4000:]))
                        return
                    if got is None:
                        break
                    (method, target, fields, body), buf = got
                    xff = b", ".join(value for name, value in fields if name == b"x-forwarded-for")
                    if xff.rsplit(b", ", 1)[-1] not in self.unmarked:
                        try:
                            check_marks(fields)
                        except Ambiguous as err:
                            self.violations.append((str(err), seen[-4000:]))
                            return
                    writer.write(self._answer(method, target, fields, body))
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    def _answer(self, method, target, fields, body):
        if target == b"/health" and not any(name == b"x-forwarded-for" for name, _ in fields):
            return b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"  # the proxy's own health check
        if target == b"/metrics" and not any(name == b"x-forwarded-for" for name, _ in fields):
            return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"  # its load scrape
        xff = [value for name, value in fields if name == b"x-forwarded-for"]
        self.received.append(Forwarded(method, target, fields, body, b", ".join(xff)))
        return OK_HEAD if method == b"HEAD" else OK

    def from_source(self, source):
        """Requests forwarded for the client at ``source``, the probes left out."""
        mine = source.encode()
        return [f for f in self.received if f.xff.rsplit(b", ", 1)[-1] == mine and f.target != PROBE]

    def close(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


class LiveProxy:
    """``python -m proxy`` in front of one endpoint, logging to a file (never a pipe nobody
    reads: a full pipe would stall the proxy and look like a hang)."""

    def __init__(self, backend_url, log_path, *flags):
        self.port, self.admin_port = free_port(), free_port()
        self.log_path = str(log_path)
        self._log = open(self.log_path, "wb")
        self._log_at = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{self.port}", "--admin-listen",
             f"127.0.0.1:{self.admin_port}", "--backend", backend_url, *flags],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ),
        )
        wait_port(self.admin_port, proc=self.proc)
        wait_port(self.port, proc=self.proc)
        deadline = time.monotonic() + 30
        while self.admin_status("/readyz") != 200:  # the endpoint passed its health checks
            assert time.monotonic() < deadline, f"the proxy never became ready: {self.log_text()[-3000:]}"
            time.sleep(0.05)
        self._sources = 0
        self.probes = 0

    def next_source(self):
        """A client address of its own for the next connection (all of 127/8 is loopback)."""
        self._sources += 1
        high, low = divmod(self._sources, 254)  # low + 1 in 1..254: never .0 or .255, never twice
        return f"127.{1 + (high >> 8) % 250}.{high & 255}.{low + 1}"

    def barrier(self, backend):
        """A probe on a fresh connection, answered by the endpoint: what the fuzzed connection
        had the proxy send is recorded by now, unless it is still on its way on another
        upstream connection (a request aborted mid-send; the next checks catch its ambiguity)."""
        self.probes += 1
        status = self.get(PROBE.decode(), source="127.0.0.2")
        assert status == 200, f"a fresh connection after the fuzzed one got {status}"

    def get(self, path, source="127.0.0.2"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10, source_address=(source, 0))
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def admin_status(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def restarts(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        match = re.search(r"^fleetproxy_worker_restarts_total (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def assert_alive(self):
        assert self.proc.poll() is None, f"the proxy exited with {self.proc.returncode}: {self.log_text()[-3000:]}"
        assert self.restarts() == 0, f"a worker died and was respawned: {self.log_text()[-3000:]}"
        with open(self.log_path, "rb") as f:
            f.seek(self._log_at)
            new = f.read().decode(errors="replace")
        self._log_at += len(new.encode(errors="replace"))
        assert not re.search(r"internal error|Traceback", new), new[-3000:]

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def read_responses(sock, until, deadline, methods=()):
    """Read responses until ``until`` final ones (None: until the close) or ``deadline``.
    ``methods``: of the requests answered, in order (a HEAD response has no body).
    Returns ([(status, head)], closed, reset): interim 1xx responses are skipped."""
    buf = b""
    got = []
    closed = reset = False
    while until is None or len(got) < until:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            closed = reset = True
            break
        if not data:
            closed = True
            break
        buf += data
        buf = _take(buf, got, methods)
    return got, closed, reset


def _take(buf, got, methods):
    """Move the complete responses at the start of ``buf`` into ``got``; return the rest."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return buf
        head = buf[:end]
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise AssertionError(f"not an HTTP response: {buf[:200]!r}") from None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(got) < len(methods) and methods[len(got)] == b"HEAD" and 200 <= status:
            length = 0
        if len(buf) < end + 4 + length:
            return buf
        buf = buf[end + 4 + length :]
        if status >= 200:
            got.append((status, head))
