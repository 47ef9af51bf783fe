"""One JSON line per proxied request (``observe.access_log``; ``--access-log``), off by default.

Per request its line is written at once into one buffer (a bytearray of ``BUFFER`` bytes, made
once: no object per line, no copy but the line's own): compiled, in C where every string of it
is plain ASCII with nothing to escape (nearly every line: ids, methods, paths, model and backend
names); otherwise a ``Line`` (a msgspec Struct) encoded by msgspec, which is the rule (a test
holds the two to one another). The buffer is written with one ``os.write`` when ``FLUSH_LINES``
are waiting (or it is nearly full) or at the latest ``FLUSH_EVERY`` after the first, so a busy
worker makes one system call per few hundred requests. ``ts`` is the request's end on the
monotonic clock the observer read, plus the wall clock's offset from it, read again at every
flush: no second clock read per request. A worker that is killed loses at most that last
second; a draining one flushes on its way out (``close``). Fields, in this order: ``ts`` (Unix
s), ``id``, ``tenant``, ``model``, ``backend``, ``attempts``, ``method``, ``path``, ``status``, ``outcome`` (as the
``outcome`` label of ``fleetproxy_requests_total``), ``ttft_ms`` (null without a response
body), ``total_ms``, ``prompt_tokens``, ``completion_tokens``, ``cached_tokens``, ``bytes``
(response body bytes from upstream).
"""

import os
from time import time as wall

import msgspec

from .metrics import clock
from .table import OUTCOMES

FLUSH_LINES = 512  # lines (~100 KiB) waiting before a write
FLUSH_EVERY = 1.0  # s
BUFFER = 256 * 1024  # bytes of lines between writes
LINE_ROOM = 4096  # kept free after a line: the C writer's longest is under 1.6 KiB
# The same as this module's own C integers (accesslog.pxd), compared per line without a box.
_FLUSH_LINES, _FULL = FLUSH_LINES, BUFFER - LINE_ROOM
_OUTCOMES = OUTCOMES  # a typed tuple where compiled: its item read without a module look-up


class Line(msgspec.Struct, gc=False):
    ts: float
    id: str
    tenant: str
    model: str
    backend: "str | None"
    attempts: int
    method: str
    path: str
    status: int
    outcome: str
    ttft_ms: "float | None"
    total_ms: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    bytes: int


_encode = msgspec.json.Encoder().encode
_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (accesslog.pxd)


def _ms(seconds):
    """Milliseconds to the microsecond: the closest double to a 3-decimal number prints as one."""
    return _thousandths(seconds) / 1000.0


def _thousandths(seconds):
    """``seconds`` in microseconds, rounded: the thousandths of the milliseconds the line shows."""
    return int(seconds * 1e6 + 0.5)


def _text(data):
    """A request's bytes as the line's text (a client's bytes never fail it)."""
    return data.decode("utf-8", "replace")


class AccessLog:
    def __init__(self, loop, path):
        self.loop = loop
        # "-": the worker's stdout, which the supervisor's own stdout is.
        self.fd = 1 if path == "-" else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.buf = bytearray(BUFFER)
        self.used = 0  # bytes of buf holding lines
        self.lines = 0  # in buf
        self.timer = None
        self.offset = wall() - clock()  # Unix seconds = monotonic seconds + offset

    def write(self, ex, status, outcome, now, model, backend):
        """The line of the request ``ex`` (an http.exchange.Exchange; typed in accesslog.pxd,
        so its fields are struct reads), as Observer.done saw it end, its tokens counted into
        its Timing (metrics.count_tokens)."""
        obs = ex.obs
        selection = ex.selection
        framer = ex.framer
        t0 = obs.t0
        t_body = obs.t_body
        ts = now + self.offset
        ms = int(ts * 1000.0)  # ms resolution; round() costs ~0.4 us a call
        total = _thousandths(now - t0)
        ttft = _thousandths(t_body - t0) if t_body > 0.0 else -1  # -1: none (null)
        if backend is not None and len(backend) == 0:
            backend = None  # routed nowhere: null
        attempts = selection.attempts if selection is not None else 0
        size = framer.body_bytes if framer is not None else 0
        n = 0
        # The C writer: 0 where a string needs escaping or a number is out of its range; a
        # negative time (clocks read out of order) is msgspec's to write as it is.
        if _COMPILED and (ttft >= 0 or t_body <= 0.0):
            n = fleetproxy_access_put(  # noqa: F821 (accesslog.pxd)
                self.buf, self.used, ms, ex.request_id, obs.tenant, model, backend, attempts, ex.method,
                ex.target, status, _OUTCOMES[outcome], ttft, total, obs.prompt_tokens, obs.completion_tokens,
                obs.cached_tokens, size,
            )
        if n:
            self.used += n
        else:
            self._add(_encode(Line(
                ms / 1000.0, _text(ex.request_id), obs.tenant, model, backend, attempts, _text(ex.method),
                _text(ex.target), status, OUTCOMES[outcome], ttft / 1000.0 if t_body > 0.0 else None,
                total / 1000.0, obs.prompt_tokens, obs.completion_tokens, obs.cached_tokens, size,
            )) + b"\n")
        self.lines += 1
        if self.lines >= _FLUSH_LINES or self.used > _FULL:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(FLUSH_EVERY, self.flush)

    def _add(self, line):
        """``line`` after the buffered ones (written out first where it does not fit)."""
        if self.used + len(line) > BUFFER:
            self.flush()
            if len(line) > BUFFER:
                self._write(line)
                return
        self.buf[self.used:self.used + len(line)] = line
        self.used += len(line)

    def flush(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.offset = wall() - clock()  # the wall clock may have been set since
        if self.used:
            self._write(memoryview(self.buf)[:self.used])
        self.used = 0
        self.lines = 0

    def _write(self, data):
        try:
            while data:  # a pipe or a file: a short write is possible, never a lost line
                data = data[os.write(self.fd, data):]
        except OSError:
            pass  # a log that cannot be written must not fail requests

    def close(self):
        self.flush()
        if self.fd != 1:
            os.close(self.fd)
