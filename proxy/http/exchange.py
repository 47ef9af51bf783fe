"""One proxied request: the Exchange between a client connection and an upstream connection.

How this works.
- ``start`` answers the proxy's own routes, or asks the router for a ``Selection`` (an
  endpoint counted in flight) and takes an idle pooled connection synchronously; only when none
  is idle does it start a task to connect (or wait for a slot). Steady state: no task, no await.
- The response half (send, pump, watchdog) is ``relay.Relay``; this class decides what its
  outcomes mean. Tenants' admission and fair queue, when configured, are ``admission.Admission``.
- Retries and fallback happen only before any response byte reached the client: on a connect
  failure, a reset, or a status the config lists (429/502/503), if the router allows it
  (``Router.reselect``: attempts, untried endpoints of the route, the retry budget) and a
  second copy can do no harm (``RetryPolicy.may_resend``: nothing was written, an idempotent
  method, or a stateless inference call). The
  in-flight count moves with the selection, so exactly one endpoint counts the request.
- A pool that cannot give a connection within its bounds (``connection_pool.PoolBusy``: too
  many waiters, or ``pool_wait`` spent) is no failure of the endpoint (no outlier count): the
  request moves to another endpoint if the router allows, else it is a 503 with
  ``Retry-After``. Every error with a ``retry_after`` is rendered with that header
  (``error_response``).
- Outcomes feed outlier detection through the endpoint (``failed``, ``answered``).
- ``finish`` is the guard every exit path runs, exactly once: it stops the watchdog and any
  connect task, returns the connection to the pool only after a response read to its end with
  keep-alive, closes it otherwise (this is what aborts the generation on the backend), and
  releases the selection's in-flight count.
- Endings: ``complete`` (relayed in full), ``fail`` (an error response before anything was
  sent), ``break_stream`` (after: an in-band error event, then a close without the terminating
  chunk, so the transfer looks broken), ``client_gone`` (abort upstream at once) and
  ``crashed`` (a bug of ours, caught at a protocol entry point: a 500 or a broken stream).
"""

import logging

from ..observe import CLIENT_ABORT, OK, TIMEOUT, UPSTREAM_ERROR, outcome_of
from ..observe.metrics import clock
from . import responses
from .admission import Admission
from .connection_pool import PoolBusy
from .errors import ProxyError, UpstreamError, UpstreamTimeout
from .relay import Relay

log = logging.getLogger("fleetproxy.exchange")


def new_exchange(down, method, target, headers, body, http10, keep_alive, request_id):
    """``Exchange(down, method, ...)`` for a request read whole (``Downstream.on_request``):
    compiled, the type's allocation and a C call of ``_setup``, not a call through ``__init__``'s
    nine arguments."""
    ex = Exchange.__new__(Exchange)
    ex._setup(down, method, target, headers, body, http10, keep_alive, request_id, None)
    return ex


class Exchange(Relay, Admission):
    __slots__ = (
        "down", "method", "target", "headers", "body", "http10", "keep_alive", "request_id", "error",
        "selection", "close_after", "task", "finished", "retried", "obs", "asked_load", "size", "tenant",
        "queued",
    )

    def __init__(self, down, method, target, headers, body, http10, keep_alive, request_id, error=None):
        self._setup(down, method, target, headers, body, http10, keep_alive, request_id, error)

    def _setup(self, down, method, target, headers, body, http10, keep_alive, request_id, error):
        """``__init__``'s work: compiled, a C call (``new_exchange`` makes an exchange per
        request without the call through ``__init__``'s arguments)."""
        self._start_relay()
        self.down = down
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.http10 = http10
        self.keep_alive = keep_alive
        self.request_id = request_id
        self.error = error  # a ClientError found while reading: answered in turn, then close
        self.selection = None  # routing.router.Selection: the endpoint counted, the route
        self.close_after = not keep_alive
        self.task = None  # connecting or waiting for a pooled connection
        self.finished = False
        self.retried = False  # the one same-endpoint retry of a reused connection was spent
        self.obs = None  # observe.Timing, only while metrics, access log or tracing are on
        self.asked_load = False  # the client asked for the endpoint's load report itself
        self.size = 0  # bytes it holds while queued behind another (Downstream's accounting)
        self.tenant = None  # tenants.Admission, only when tenants are configured
        self.queued = None  # tenants.fairqueue.Entry while it waits in the fair queue (tenants/gate.py)

    @property
    def endpoint(self):
        selection = self.selection
        return selection.endpoint if selection is not None else None

    # -- request phase --------------------------------------------------------------------

    def start(self):
        down = self.down
        ctx = down.ctx
        if ctx.observe is not None:
            ctx.observe.begin(self)
        if self.error is not None:
            self.finished = True
            down.answer(self, error_response(self.error, self.request_id, True), close=True)
            return
        if ctx.tenants is not None and self.target != b"/health" and not self._admit(ctx):
            return
        self._route(ctx)

    def _route(self, ctx):
        """``start`` past admission: the proxy's own routes, or an endpoint and the request sent."""
        down = self.down
        if self.method == b"GET":
            target = self.target
            if target == b"/health":
                # Answered here for load balancers and probes: up while any endpoint is.
                self.finished = True
                down.answer(self, responses.health(ctx.ready(), close=self.close_after))
                return
            if target == b"/v1/models" and ctx.models_body is not None:
                # The configured models (clusters keyed by model), not one endpoint's view.
                self.finished = True
                down.answer(self, responses.json_response(200, ctx.models_body, self.request_id, self.close_after))
                return
        try:
            gate = ctx.tenants.gate if self.tenant is not None else None
            if gate is None:
                self.selection = ctx.router.select(self.headers, self.body)
            else:  # the route first: its backends may be saturated, and then it waits its turn
                selection = ctx.router.prepare(self.headers, self.body)
                if gate.hold(self, selection, self.body):
                    return
                self.selection = ctx.router.place(selection)
        except ProxyError as exc:
            self.finish(False)
            down.answer(self, error_response(exc, self.request_id, self.close_after))
            return
        if self.obs is not None:
            ctx.observe.admitted(self)
        self._connect_or_send()

    def _connect_or_send(self):
        endpoint = self.selection.endpoint
        adapter = endpoint.adapter
        if adapter is not None:
            refused = adapter.refusal(self.method, self.target)
            if refused is not None:  # an external provider never sees it (routing/provider.py)
                self.fail(refused)
                return
        conn = endpoint.pool.take_idle()
        if conn is not None:
            self.send(conn)
        else:
            self.task = self.down.ctx.loop.create_task(self._connect())

    async def _connect(self):
        endpoint = self.selection.endpoint
        t = clock() if self.obs is not None else 0.0
        try:
            conn = await endpoint.pool.acquire()
        except PoolBusy as exc:
            self.task = None
            if not self.retry(False):
                self.fail(exc)
            return
        except TimeoutError:
            self.task = None
            self.upstream_failed(f"timed out connecting to backend {endpoint.label}", timeout=True, retryable=True)
            return
        except OSError as exc:
            self.task = None
            self.upstream_failed(f"cannot connect to backend {endpoint.label}: {_reason(exc)}")
            return
        except Exception as exc:  # the task is an entry point of its own: end the request
            self.task = None
            self.down.crashed(exc)
            return
        self.task = None
        if self.obs is not None:  # a fresh connection was opened for it, or it queued for one
            self.down.ctx.observe.waited(self, clock() - t, conn.requests == 0)
        if self.finished:  # the client left while we connected; the connection is clean
            endpoint.pool.release(conn)
            return
        try:
            self.send(conn)
        except Exception as exc:
            self.down.crashed(exc)

    # -- what the relay's outcomes mean ---------------------------------------------------

    def on_status(self, status, reusable):
        """A response head arrived, nothing sent to the client yet. Returns True if the
        request went to another endpoint instead (``reusable``: the response is complete and
        its connection may go back to the pool)."""
        ctx = self.down.ctx
        endpoint = self.selection.endpoint
        endpoint.answered(status, ctx.loop)
        if status >= 429 and status in ctx.router.retry.statuses:
            return self.retry(reusable)
        return False

    def upstream_failed(self, message, timeout=False, retryable=None):
        """The endpoint failed us: connect error, reset, close or timeout. ``retryable``
        defaults to "not a timeout": a backend silent past first_byte may still be working."""
        if self.finished:
            return
        ctx = self.down.ctx
        loop = ctx.loop
        endpoint = self.selection.endpoint
        if self.head_sent:
            endpoint.failed(loop.time())
            self.break_stream(message, UpstreamTimeout(message) if timeout else None)
            return
        conn = self.conn
        framer = self.framer  # set once the request was written to a connection
        resend = ctx.router.retry.may_resend(self.method, self.target, framer is not None)
        if (
            not timeout and resend and not self.retried and self.reused and not framer.started
            and ctx.router.retry.budget.try_retry(loop.time())
        ):
            # A pooled connection the backend closed as we reused it: it most likely never saw
            # the request, and the method says a second copy would do no harm.
            self.retried = True
            if conn is not None:
                conn.close()
            self.conn = None
            self._cancel_timer()
            self.task = loop.create_task(self._connect())
            return
        endpoint.failed(loop.time())
        if (not timeout if retryable is None else retryable) and resend and self.retry(False):
            return
        self.fail(UpstreamTimeout(message) if timeout else UpstreamError(message))

    def retry(self, reusable):
        """Send the request again to another endpoint, if the router allows. ``reusable``: the
        current connection ended its response cleanly and may go back to its pool. Returns
        False, having changed nothing, when it may not."""
        if self.finished or self.head_sent:
            return False
        selection = self.selection
        old = selection.endpoint
        if not self.down.ctx.router.reselect(selection, self.down.ctx.loop.time()):
            return False
        if self.obs is not None:
            self.down.ctx.observe.retried(self, old, self.framer.status if self.framer is not None else 0)
        self._give_back(reusable)
        self._cancel_timer()
        self.framer = None
        self.held = None
        log.debug("request %s: retrying on backend %s after %s", _rid(self), selection.endpoint.label, old.label)
        self._connect_or_send()
        return True

    # -- endings ----------------------------------------------------------------------------

    def complete(self, reusable):
        self.finish(reusable)
        if self.obs is not None:
            self.down.ctx.observe.done(self, self.framer.status, OK)
        self.down.exchange_done(self)

    def fail(self, err):
        """Failure before any response byte reached the client: a 5xx it can read."""
        self.finish(False)
        down = self.down
        if err.public:  # the client reads a fixed sentence; the details are the operator's
            log.warning("request %s: %s", _rid(self), err.message)
        if self.obs is not None:
            down.ctx.observe.done(self, err.status, outcome_of(err))
        down.answer(self, error_response(err, self.request_id, self.close_after))

    def break_stream(self, message, err=None):
        """Failure after the response started: report it in-band if we can, then close the
        client connection without the terminating chunk, so the transfer looks broken.
        ``err``: what to report (default: an upstream error); the endpoint's faults are logged
        here with their details, a failure of our own was logged already."""
        self.finish(False)
        down = self.down
        if err is None:
            err = UpstreamError(message)
        if err.public:
            log.warning("request %s: %s", _rid(self), message)
        event = responses.sse_error_event(err.public or err.message, err.type, err.status)
        obs = self.obs
        if obs is not None:
            if self.framer.event_stream:  # the client reads an error event: counted as the backend's are
                obs.prev, obs.tail, obs.tail_at = obs.tail, event, 0
            outcome = TIMEOUT if isinstance(err, UpstreamTimeout) else UPSTREAM_ERROR
            down.ctx.observe.done(self, self.framer.status, outcome)
        pending = self.pending()
        event = self.in_band_error(event)
        if event is not None or pending:
            down.write(pending + event if event is not None else pending)
        down.close()

    def crashed(self, err):
        """A failure of our own (``Downstream.crashed``): end like an upstream failure would,
        a 500 before the response started, a broken stream after. The caller closes."""
        if self.finished:
            return  # its answer was written in full already
        if self.head_sent:
            self.break_stream(err.message, err)
            return
        self.finish(False)
        if self.obs is not None:
            self.down.ctx.observe.done(self, err.status, UPSTREAM_ERROR)
        response = responses.error(err, self.request_id, close=True)
        self.down.write(responses.head_only(response) if self.method == b"HEAD" else response)

    def client_gone(self):
        """The client disconnected: abandon the upstream request at once."""
        if not self.finished and self.obs is not None:
            self.down.ctx.observe.done(self, 499, CLIENT_ABORT)  # nginx's status for it
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
        if self.queued is not None:
            self.down.ctx.tenants.gate.cancel(self)
        if self.selection is not None:
            self.selection.release()
        if self.tenant is not None:
            tenants = self.down.ctx.tenants
            tenants.release(self)
            if tenants.gate is not None and tenants.gate.waiting and self.selection is not None:
                tenants.gate.finished(self.selection.route)


def error_response(err, request_id=b"", close=True):
    """``responses.error`` for ``err``, with ``Retry-After`` when the error carries one (a
    bound of ours was reached: the request may succeed if sent again a little later)."""
    retry_after = getattr(err, "retry_after", 0)
    headers = b"retry-after: %d\r\n" % retry_after if retry_after else b""
    return responses.error(err, request_id, close, headers)


def _reason(exc):
    return exc.strerror or str(exc) or type(exc).__name__


def _rid(exchange):
    return exchange.request_id.decode(errors="replace")
