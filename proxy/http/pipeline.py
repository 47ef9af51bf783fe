"""How far a client connection reads: no further than its pipeline has room for.

How this works (a part of ``downstream.Downstream``, kept apart for its size).
- Parsing stops where the pipeline is full. llhttp cannot stop in the middle of a buffer, so a
  read is fed in slices that cannot complete more requests than there is room for (``cut``),
  and what is left of the read waits unparsed in ``unparsed``, reading paused, until the queue
  drains. Room: ``max_pipelined`` requests behind the active one, and ``max_queued_bytes`` of
  request bytes waiting (parsed, unparsed, and the part of a request still arriving behind the
  active one). A connection over its own budget is only paused: its pipeline delays nobody but
  itself, so backpressure bounds it without refusing an honest client.
- Over the worker's budget (``max_worker_queued_bytes``, summed in ``ctx.queued_bytes``) the
  connection adding to it is refused instead: a shared budget held by some must not stall
  everyone else, so its waiting requests are dropped (never processed, as RFC 9112 9.6 allows
  after a close) and the next answer is a 503 with ``Retry-After``, then the connection closes.
"""

import logging
import re

from .errors import Overloaded
from .request import IDLE, Sink

log = logging.getLogger("fleetproxy.downstream")

# Reasons to stop reading the client; reading resumes when none is left.
PAUSE_PIPELINE = 1  # the queue is full (requests or bytes); the rest waits in ``unparsed``
PAUSE_UPSTREAM = 2
PAUSE_ERROR = 4
_ERROR = PAUSE_ERROR  # a C int where compiled (pipeline.pxd): tested on every read
OURS = PAUSE_PIPELINE | PAUSE_UPSTREAM  # we stopped reading, not the client: no read deadline

# Where a request head may end: its blank line. llhttp wants CRLF CRLF; this also matches bare
# LFs, so it over-counts (body bytes too), which only makes slices shorter (see ``cut``).
_BLANK_LINE = re.compile(rb"\n\r?\n")
_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (pipeline.pxd)
_IDLE = IDLE  # (a C int where compiled, as the reader's phase is)


class Pipeline(Sink):
    """The reading half of ``Downstream``: its state lives in Downstream's slots."""

    __slots__ = ()

    def _room(self):
        """Requests that may still complete before the pipeline is full (the active one
        counts while it is not there yet), or 0 when the queued bytes are at their bound.
        Bytes held unparsed do not count here: they are what waits for the room."""
        ctx = self.ctx
        waiting = self.queued_size
        if self.active is not None or self.queue:
            waiting += self.partial
        if waiting >= ctx.max_queued_bytes:
            return 0
        return ctx.max_pipelined - len(self.queue) + (self.active is None)

    def _parse(self, data):
        """Feed ``data`` to the reader, in slices that cannot complete more requests than
        there is room for; keep what is left in ``unparsed`` and pause reading."""
        reader = self.reader
        n = len(data)
        pos = 0
        self.feeding = True
        try:
            while pos < n and not self.closed and not self.paused & _ERROR:
                room = self._room()
                if room <= 0:
                    self.unparsed = data[pos:] if pos else data
                    break
                # Fewer blank lines than room: the whole read at once (the common case).
                if pos == 0 and few_blank_lines(data, room):
                    end = n
                else:
                    end = cut(data, pos, room)
                chunk = data[pos:end] if pos or end < n else data
                self.completed = False
                reader.feed(chunk)
                if reader.phase == _IDLE:
                    self.partial = 0
                elif self.completed:
                    self.partial = len(chunk)
                else:
                    self.partial += len(chunk)
                pos = end
        finally:
            self.feeding = False
        if self.unparsed is not None or (not self.closed and self._room() <= 0):
            self.pause_reading(PAUSE_PIPELINE)
        self._account()
        ctx = self.ctx
        if self.queued_bytes and ctx.queued_bytes > ctx.cfg.limits.max_worker_queued_bytes and not self.closed:
            self._over_worker_budget()

    def _account(self):
        """Bring this connection's share of the worker's queued request bytes up to date:
        requests parsed and waiting, bytes not parsed yet, and a request still arriving behind
        the active one (a request that will start as soon as it completes is not waiting)."""
        size = self.queued_size
        if self.unparsed is not None:
            size += len(self.unparsed)
        if self.active is not None or self.queue:
            size += self.partial
        delta = size - self.queued_bytes
        if delta:
            self.queued_bytes = size
            self.ctx.queued_bytes += delta

    def exchange_done(self, exchange):
        raise NotImplementedError  # Downstream's

    def write(self, data):
        raise NotImplementedError  # Downstream's

    def _drop_waiting(self):
        """Forget every request that has not started, parsed or not."""
        self.queue.clear()
        self.queued_size = 0
        self.unparsed = None
        self.partial = 0
        self._account()

    def _over_worker_budget(self):
        """The worker holds more queued request bytes than its budget, and this connection
        adds to them: drop its waiting requests, answer the next one with a 503, close."""
        ctx = self.ctx
        if "queued_bytes" not in ctx.warned:
            ctx.warned.add("queued_bytes")
            log.warning(
                "worker holds %d queued request bytes, above limits.max_worker_queued_bytes (%d): refusing "
                "pipelined requests with 503; this is logged once", ctx.queued_bytes,
                ctx.cfg.limits.max_worker_queued_bytes,
            )
        self.pause_reading(PAUSE_ERROR)
        self._drop_waiting()
        err = Overloaded("the proxy holds too many queued requests; retry later")
        # Imported here: exchange.py's compile types its state through this module (relay.pxd
        # cimports pipeline.pxd), so importing it at the top would be a cycle.
        from .exchange import Exchange

        self.queue.append(Exchange(self, b"", b"", [], b"", False, False, self.ctx.next_request_id(), err))
        self._advance()


def few_blank_lines(data, room):
    """Whether ``data`` holds fewer than ``room`` blank lines (``_BLANK_LINE``'s matches), so
    that feeding all of it cannot complete more requests than there is room for. Compiled, one
    memchr walk from LF to LF that stops at the ``room``-th; interpreted, two counts that may
    say no where the walk says yes (``cut`` then gives the same answer, the whole read)."""
    if not _COMPILED:
        return data.count(b"\n") < room or data.count(b"\n\r\n") + data.count(b"\n\n") < room
    n = len(data)
    buf = data
    seen = 0
    i = 0
    while i < n:
        lf = memchr(buf + i, 10, n - i)  # noqa: F821 (pipeline.pxd)
        if not lf:
            break
        i = lf - buf + 1
        if i < n and buf[i] == 10:
            i += 1
        elif i + 1 < n and buf[i] == 13 and buf[i + 1] == 10:
            i += 2
        else:
            continue
        seen += 1
        if seen >= room:
            return False
    return True


def cut(data, pos, room):
    """Where to end a slice of ``data`` from ``pos`` so that feeding it completes at most
    ``room`` requests: just before the last LF of the ``room``-th blank line. A request
    completes at the earliest on its head's blank line, requests complete one after another,
    so between two blank lines (the first one's LF included, the second's excluded) at most
    one completes, and before the first, only the request already under way. The slice is
    never empty: a blank line ends at least one byte past ``pos``."""
    seen = 0
    for match in _BLANK_LINE.finditer(data, pos):
        seen += 1
        if seen == room:
            return match.end() - 1
    return len(data)



def held_size(target, headers, body):
    """A queued request's bytes, as held in memory (body, target, fields)."""
    size = len(body) + len(target) + 64
    for name, value in headers:
        size += len(name) + len(value) + 4
    return size
