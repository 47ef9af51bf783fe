"""One proxied request: the Exchange between a client connection and an upstream connection.

How this works.
- ``start`` picks a backend and takes an idle pooled connection synchronously; only when none
  is idle does it start a task to connect (or wait for a slot). Steady state: no task, no await.
- ``upstream_data`` is the response pump. The framer tracks the message; the bytes the upstream
  sent go to the client as they came (no re-chunking, no SSE re-encoding), except that an event
  stream is cut at event boundaries, holding a partial event until it completes, so a failure
  can always be reported as a whole in-band event.
- Backpressure is cross-wired: the client transport's pause_writing pauses reading the
  upstream (``Downstream.pause_writing``), the upstream transport's pauses reading the client
  (``UpstreamConnection.pause_writing``).
- ``finish`` is the guard every exit path runs, exactly once: it stops the watchdog and any
  connect task, returns the connection to the pool only after a response read to its end with
  keep-alive, closes it otherwise (this is what aborts the generation on the backend), and
  releases the in-flight count on the backend object it was acquired on (``self.backend``:
  whatever router is current by then, a reload cannot make the count leak or go negative).
- Retries and fallback happen only before any response byte reached the client: on a connect
  failure, a reset, or a status the config lists (429/502/503), if the request has attempts
  left and the router's retry budget allows. ``retry`` moves the exchange to another backend
  (``Router.repick``: untried backends of the pool, then the fallback chain) and hands the
  in-flight count over in one step, so ``self.backend`` is always the one backend counted.
- Outcomes feed outlier detection: connect errors, resets, timeouts and 502/503/504 call
  ``Backend.failed``; any other answer resets the backend's failure streak.
"""

import logging

from _speedups import DONE, ERROR, HEAD, UNTIL_CLOSE, CHUNKED, ResponseFramer, dechunk

from . import accesslog, http1
from .admin import health_response, json_response, response_bytes
from .errors import ProxyError, UpstreamError, UpstreamTimeout, sse_error_event

log = logging.getLogger("fleetproxy.relay")

MAX_HOLD = 1024 * 1024  # bytes: an SSE event larger than this is passed on before it ends


class Exchange:
    __slots__ = (
        "down", "method", "target", "headers", "body", "http10", "keep_alive", "request_id",
        "error", "backend", "conn", "framer", "head_sent", "held", "close_after", "dechunk",
        "timer", "task", "finished", "ticks", "rx_seen", "retried", "reused", "route", "attempts",
        "tried", "fields", "t0",
    )

    def __init__(self, down, method, target, headers, body, http10, keep_alive, request_id, error=None):
        self.down = down
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.http10 = http10
        self.keep_alive = keep_alive
        self.request_id = request_id
        self.error = error  # a ClientError found while parsing: answered in turn, then close
        self.backend = None
        self.conn = None
        self.framer = None
        self.head_sent = False
        self.held = None
        self.close_after = not keep_alive
        self.dechunk = False
        self.timer = None
        self.task = None
        self.finished = False
        self.ticks = 0
        self.rx_seen = 0
        self.retried = False
        self.reused = False
        self.route = None  # router.Route chosen at start (its router, its pools in order)
        self.attempts = 0  # upstream attempts that reached a backend pick
        self.tried = None  # backends already tried (only after a retry)
        self.fields = None  # router.RoutingFields, decoded from the body on first need
        self.t0 = 0.0  # start time, kept only for the access log

    # -- request phase --------------------------------------------------------------------

    def start(self):
        if self.down.ctx.access_log:
            self.t0 = self.down.ctx.loop.time()
        if self.error is not None:
            self.finished = True
            self.down.send_error(self, self.error, close=True)
            return
        ctx = self.down.ctx
        router = ctx.router
        if self.method == b"GET":
            target = self.target
            if target == b"/health":
                # Answered here for load balancers and probes: up while any backend is.
                self.finished = True
                self.down.answer(self, response_bytes(*health_response(ctx.ready()), keep_alive=self.keep_alive))
                return
            if target == b"/v1/models" and router.models_body is not None:
                # The configured models (pools keyed by model), not one backend's view.
                self.finished = True
                self.down.answer(self, json_response(router.models_body, self.request_id, self.keep_alive))
                return
        try:
            self.backend = backend = router.pick(self)
        except ProxyError as exc:
            self.finished = True
            self.down.send_error(self, exc, close=False)
            return
        self.attempts = 1
        conn = backend.pool.take_idle()
        if conn is not None:
            self.send(conn)
        else:
            self.task = ctx.loop.create_task(self._connect())

    async def _connect(self):
        backend = self.backend
        try:
            conn = await backend.pool.acquire()
        except TimeoutError:
            self.task = None
            self.upstream_failed(f"timed out connecting to backend {backend.label}", timeout=True, retryable=True)
            return
        except OSError as exc:
            self.task = None
            self.upstream_failed(f"cannot connect to backend {backend.label}: {_reason(exc)}")
            return
        self.task = None
        if self.finished:  # the client left while we connected; the connection is clean
            backend.pool.release(conn)
            return
        self.send(conn)

    def send(self, conn):
        self.conn = conn
        conn.exchange = self
        conn.requests += 1
        self.reused = conn.requests > 1
        down = self.down
        ctx = down.ctx
        self.framer = ResponseFramer(self.method == b"HEAD", self.http10)
        backend = self.backend
        body = self.body
        if backend.adapted:
            target, headers, body = backend.adapt(self.target, self.headers, body)
        else:
            target = backend.base_path + self.target if backend.base_path else self.target
            headers = self.headers
        head = http1.upstream_head(
            self.method, target, headers, backend.authority, down.peer, self.request_id, len(body), backend.extra
        )
        transport = conn.transport
        if down.writing_paused:
            transport.pause_reading()
        if len(body) < 65536:
            transport.write(head + body if body else head)
        else:
            transport.writelines((head, body))
        self.ticks = 0
        self.rx_seen = conn.rx
        self.timer = ctx.loop.call_later(ctx.tick, self._watch)

    # -- response phase -------------------------------------------------------------------

    def upstream_data(self, data):
        framer = self.framer
        flags = framer.feed(data)
        down = self.down
        n = len(data)
        start = 0
        head = None
        if flags & HEAD:
            status = framer.status
            if status >= 429:
                if self._bad_status(status, flags & DONE and not flags & ERROR and framer.keep_alive):
                    return  # retried elsewhere; this response is dropped
            elif self.backend.failures:
                self.backend.failures = 0
            if framer.kind == UNTIL_CLOSE or down.ctx.draining:
                self.close_after = True
            if self.http10 and framer.kind == CHUNKED:
                self.dechunk = True
                self.close_after = True
            head = http1.client_head(framer, self.request_id, self.close_after, self.dechunk)
            self.head_sent = True
            start = framer.head_end
        elif flags & ERROR and not self.head_sent:
            self.backend.failed(self.down.ctx.loop.time())
            self.fail(UpstreamError(f"invalid response from backend {self.backend.label}: {framer.error}"))
            return
        end = framer.msg_end if flags & DONE else framer.safe_end
        if end < start:
            end = start

        held = self.held
        if held is None:
            if start == 0 and end == n:
                out = data  # the common case: forwarded as received
            else:
                out = data[start:end]
                if end < n and not flags & (DONE | ERROR):
                    self.held = data[end:]
        elif end > start:
            out = held + data[start:end]
            self.held = data[end:] if end < n and not flags & (DONE | ERROR) else None
        else:
            held += data[start:]
            if len(held) > MAX_HOLD:
                out, self.held = held, None
            else:
                out, self.held = b"", held

        if self.dechunk and out:
            out = dechunk(out)
        if head is not None:
            down.transport.write(head + out if out else head)
        elif out:
            down.transport.write(out)

        if flags & DONE:
            self.complete(framer.keep_alive and not flags & ERROR)
        elif flags & ERROR:
            self.break_stream(f"backend {self.backend.label} broke the response framing: {framer.error}")

    def upstream_eof(self):
        pass  # connection_lost follows; it decides whether EOF ended the message

    def upstream_lost(self, exc):
        self.conn = None  # the connection already detached itself
        if self.finished:
            return
        framer = self.framer
        if framer is not None and framer.eof():
            # Close-delimited body: EOF is its end.
            if self.held:
                self.down.transport.write(self.held)
                self.held = None
            self.complete(False)
            return
        reason = "reset the connection" if exc is not None else "closed the connection"
        self.upstream_failed(f"backend {self.backend.label} {reason} before the response completed")

    def upstream_failed(self, message, timeout=False, retryable=None):
        """The backend failed us: connect error, reset, close or timeout. ``retryable``
        defaults to "not a timeout": a backend silent past first_byte may still be working."""
        if self.finished:
            return
        loop = self.down.ctx.loop
        if self.head_sent:
            self.backend.failed(loop.time())
            self.break_stream(message)
            return
        conn = self.conn
        reusable_retry = (
            not timeout
            and not self.retried
            and (self.framer is None or not self.framer.started)
            and self.reused
        )
        if reusable_retry:
            # A pooled connection the backend closed as we reused it: it never saw the request.
            self.retried = True
            if conn is not None:
                conn.close()
            self.conn = None
            self._cancel_timer()
            self.task = loop.create_task(self._connect())
            return
        self.backend.failed(loop.time())
        if (not timeout if retryable is None else retryable) and self.retry(False):
            return
        err = UpstreamTimeout(message) if timeout else UpstreamError(message)
        self.fail(err)

    def _bad_status(self, status, reusable):
        """A 429 or 5xx head arrived, nothing sent to the client yet. Returns True if the
        request went to another backend instead."""
        backend = self.backend
        if 502 <= status <= 504:
            backend.failed(self.down.ctx.loop.time())
        elif status < 500 and backend.failures:
            backend.failures = 0
        route = self.route
        return route is not None and status in route.router.retry_statuses and self.retry(reusable)

    def retry(self, reusable):
        """Send the request again to another backend, if attempts, the retry budget and the
        route allow. ``reusable``: the current connection ended its response cleanly and may
        go back to its pool. Returns False, having changed nothing, when it may not."""
        route = self.route
        if route is None or self.finished or self.head_sent:
            return False
        router = route.router
        if self.attempts >= router.max_attempts:
            return False
        new = router.repick(self)
        if new is None:
            return False
        loop = self.down.ctx.loop
        if not router.budget.try_retry(loop.time()):
            new.release()
            return False
        self._give_back(reusable)
        self._cancel_timer()
        old = self.backend
        self.backend = new  # the hand-over: exactly one backend counts this exchange
        old.release()
        self.attempts += 1
        self.framer = None
        self.held = None
        log.debug(
            "request %s: retrying on backend %s after %s", self.request_id.decode(errors="replace"), new.label, old.label
        )
        conn = new.pool.take_idle()
        if conn is not None:
            self.send(conn)
        else:
            self.task = loop.create_task(self._connect())
        return True

    def _watch(self):
        # Progress watchdog, ticking every ctx.tick seconds: a stall of first_byte (before any
        # body byte) or idle (after) fails the exchange. A counter, not a timer re-armed per read.
        self.timer = None
        conn = self.conn
        if self.finished or conn is None:
            return
        ctx = self.down.ctx
        if conn.rx != self.rx_seen or self.down.writing_paused:
            # Progress, or we stopped reading ourselves (the client is slow): not a stall.
            self.rx_seen = conn.rx
            self.ticks = 0
        else:
            self.ticks += 1
        limit = ctx.idle_ticks if self.framer.body_bytes else ctx.first_byte_ticks
        if self.ticks >= limit:
            what = "idle" if self.framer.body_bytes else "first byte"
            self.upstream_failed(f"backend {self.backend.label} timed out ({what} timeout)", timeout=True, retryable=False)
            return
        self.timer = ctx.loop.call_later(ctx.tick, self._watch)

    # -- endings ----------------------------------------------------------------------------

    def complete(self, reusable):
        self.finish(reusable)
        if self.down.ctx.access_log:
            accesslog.write(self, self.framer.status, "done")
        self.down.exchange_done(self)

    def fail(self, err):
        """Failure before any response byte reached the client: a 5xx it can read."""
        self.finish(False)
        if self.down.ctx.access_log:
            accesslog.write(self, err.status, "error")
        self.down.send_error(self, err, close=False)

    def break_stream(self, message):
        """Failure after the response started: report it in-band if we can, then close the
        client connection without the terminating chunk, so the transfer looks broken."""
        self.finish(False)
        down = self.down
        log.warning("request %s: %s", self.request_id.decode(errors="replace"), message)
        if down.ctx.access_log:
            accesslog.write(self, self.framer.status, "broken")
        if self.framer.event_stream:
            event = sse_error_event(message)
            down.transport.write(event if self.dechunk or self.framer.kind != CHUNKED else http1.chunk(event))
        down.close()

    def client_gone(self):
        """The client disconnected: abandon the upstream request at once."""
        if not self.finished and self.down.ctx.access_log:
            accesslog.write(self, 499, "client_gone")
        self.finish(False)

    def finish(self, reusable):
        """The one guard on every exit path (see module docstring). Idempotent."""
        if self.finished:
            return
        self.finished = True
        self._cancel_timer()
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._give_back(reusable)
        backend = self.backend
        if backend is not None:
            backend.release()  # the backend it was acquired on, whatever router is current now

    def _give_back(self, reusable):
        """Pool the connection after a response read to its end with keep-alive; else close it
        (closing is what makes the backend abort the generation)."""
        conn = self.conn
        if conn is not None:
            self.conn = None
            if reusable and not conn.closed:
                if self.down.writing_paused:
                    conn.transport.resume_reading()
                conn.pool.release(conn)
            else:
                conn.close()

    def _cancel_timer(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _reason(exc):
    return exc.strerror or str(exc) or type(exc).__name__
