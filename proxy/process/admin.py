"""The admin listener (its own port): liveness, readiness, endpoint state and drains, metrics.

Off the data path and deliberately plain: one request at a time per connection, small
responses, close on anything unexpected. ``AdminProtocol`` serves both admin listeners: a
worker's (this module's ``start``; private under a supervisor, public with
``--single-process`` and in the demo) and the supervisor's (``supervisor_admin``).

A worker's routes: ``GET /healthz``, ``GET /readyz``, ``GET /metrics``, ``GET /admin/backends``
(every endpoint with its health, ejection, drain, in-flight and connection-pool state; every
cluster with its policy, fallback chain and eligible members; the retry budget), and
``POST /admin/backends/NAME/drain`` and ``.../undrain`` (NAME is the endpoint's name, or
host:port when it has none). A drained endpoint takes no new requests; those in flight finish.

Who may do what (``AdminProtocol._refusal``, the same on every admin listener).
- Reading is open: ``/healthz``, ``/readyz`` and ``/metrics`` for probes and scrapers, and the
  read-only ``GET /admin/backends`` and ``GET /admin/workers`` (state, no secrets: provider keys
  never appear in it), so dashboards and operators need no secret to look.
- Changing is not: every other method (POST: drains, scaling) needs ``Authorization: Bearer
  <token>``, compared in constant time (``hmac.compare_digest``'s function). The token comes from
  ``admin.token_file`` or the variable ``admin.token_env`` (config.AdminConfig); with none
  configured those routes answer 403 and say how to set one. Anyone who reaches the port
  could otherwise drain every endpoint or scale to the worker limit.
- A browser on the same machine must not drive it either. The token already stops a
  cross-site form (a page cannot add an Authorization field without a CORS preflight that this
  listener never grants); besides, a body must be ``application/json`` (415; the types a page may
  send without a preflight are not), and the Host field must name this listener (421): a page
  that rebinds its own DNS name to 127.0.0.1 (DNS rebinding) still sends its own name, so it
  cannot even read the state. Accepted: 127.0.0.1, localhost, [::1], the configured admin_listen
  host, the local address the connection reached (a probe by IP), and ``admin.hosts``, each
  with this listener's port. A request without Host (HTTP/1.0 probes) comes from no browser
  and is accepted.
- Bounded: a request's head and body beyond ``admin.max_request_bytes`` get 413 and a close.
  A connection has ``admin.idle_timeout`` to send a whole request, counted from its start or
  from the previous answer: one that sends nothing is closed then, and so is one that trickles
  bytes to hold the connection (slowloris). An admin request is a few hundred bytes.
"""

import asyncio
import logging
from urllib.parse import unquote

import httptools
import orjson

from ..http import responses
from . import metrics

try:  # what hmac.compare_digest is (constant time), without hmac loading OpenSSL's libcrypto
    from _operator import _compare_digest as compare_digest  # into the supervisor (~0.5 MiB)
except ImportError:
    from hmac import compare_digest

log = logging.getLogger("fleetproxy.admin")

OK = {"status": "ok"}
READ_ONLY = ("GET", "HEAD")  # methods that change nothing: no token asked


def readiness(ready):
    """``/readyz``: ready while this worker serves and any endpoint may take traffic."""
    return (200, OK) if ready else (503, {"status": "unavailable", "reason": "no healthy backend"})


def render(status, payload, close):
    """A JSON answer, or Prometheus text when ``payload`` is bytes already."""
    if isinstance(payload, bytes):
        return responses.response(status, payload, responses.PROMETHEUS_TEXT, close=close)
    return responses.json_response(status, payload, close=close)


def _authority(host, port):
    """HOST:PORT as a Host field writes it (IPv6 in brackets), lower-cased."""
    host = host.lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _host_and_port(entry):
    """(host, port or None) from ``NAME``, ``NAME:PORT``, ``[V6]`` or ``[V6]:PORT``."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:  # a bare name, or a bare IPv6 address
        host, port = entry, ""
    return host, int(port) if port.isdigit() else None


def allowed_hosts(settings, listen_host, sockname):
    """The Host values (lower-cased) a request may carry on a connection whose local address
    is ``sockname``, on a listener configured on ``listen_host``."""
    local, port = sockname[0], sockname[1]
    out = set()
    for entry in ("127.0.0.1", "localhost", "[::1]", f"[{listen_host}]", f"[{local}]", *settings.hosts):
        host, given = _host_and_port(entry.lower())
        out.add(_authority(host, given or port))
        if (given or port) == 80:  # a browser leaves the default port out
            out.add(f"[{host}]" if ":" in host else host)
    return out


def authorize(settings, authorization):
    """None when ``authorization`` (the field's value, bytes or None) carries the admin token;
    else the (status, payload) refusal: 403 with no token configured, 401 with a wrong one."""
    try:
        token = settings.token()
    except ValueError as exc:
        log.warning("admin: %s; mutating admin routes are refused", exc)
        return 403, {"error": f"mutating admin routes are disabled: {exc}"}
    if token is None:
        where = f"the environment variable {settings.token_env}" if settings.token_env else "a variable"
        return 403, {
            "error": "mutating admin routes are disabled: no admin token is configured. Set "
            f"{where} (admin.token_env) or admin.token_file to a secret of at least "
            f"{settings.MIN_TOKEN_CHARS} characters, restart, and send 'Authorization: Bearer <token>'."
        }
    scheme, _, given = (authorization or b"").strip().partition(b" ")
    if scheme.lower() != b"bearer" or not compare_digest(given.strip(), token.encode()):
        return 401, {"error": "this admin route needs 'Authorization: Bearer <token>' with the admin token"}
    return None


def json_body(content_type, body):
    """None when ``body`` is empty or JSON sent as application/json; else the refusal."""
    if not body:
        return None
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    if media != b"application/json":
        return 415, {"error": "an admin request body must be JSON, sent with content-type: application/json"}
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return 400, {"error": "the request body is not valid JSON"}
    return None


class Request:
    __slots__ = ("method", "path", "body", "keep_alive", "host", "hosts", "authorization", "content_type")

    def __init__(self):
        self.method = self.path = ""
        self.body = b""
        self.keep_alive = False
        self.host = None
        self.hosts = 0  # Host fields seen
        self.authorization = None
        self.content_type = None


class AdminProtocol(asyncio.Protocol):
    """Plain HTTP/1.1 for admin listeners, one request at a time, answered in order.

    ``handle(method, path, body)`` is a coroutine returning (status, payload): anything JSON
    encodes, or bytes of Prometheus text. It may await (the supervisor fans requests out).
    ``settings()`` returns the current config.AdminConfig (a reload may replace it);
    ``listen_host`` is the host the listener was configured on. Each request passes
    ``_refusal`` (see the module docstring) before ``handle`` sees it.
    """

    def __init__(self, handle, settings, listen_host):
        self.handle = handle
        self.settings = settings
        self.listen_host = listen_host
        self.transport = None
        self.loop = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.request = Request()
        self.pending = asyncio.Queue()
        self.outstanding = 0  # requests parsed and not yet answered
        self.size = 0  # bytes received for the request being read
        self.limit = 0
        self.idle = 0.0
        self.since = 0.0  # loop time the connection began waiting for its next request
        self.stopped = False  # a refusal is queued: nothing more is read
        self.task = None
        self.timer = None
        self.hosts = None

    def connection_made(self, transport):
        self.transport = transport
        self.loop = loop = asyncio.get_running_loop()
        settings = self.settings()
        self.limit = settings.max_request_bytes
        self.idle = settings.idle_timeout
        self.since = loop.time()
        self.hosts = allowed_hosts(settings, self.listen_host, transport.get_extra_info("sockname"))
        self.task = loop.create_task(self._answer())
        self.timer = loop.call_later(self.idle, self._check_idle)

    def connection_lost(self, exc):
        self.task.cancel()
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data):
        if self.stopped:
            return
        self.size += len(data)
        if self.size > self.limit:
            limit = f"admin requests are limited to {self.limit} bytes (admin.max_request_bytes)"
            self._stop(413, {"error": limit})
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._stop(400, {"error": "malformed request"})

    def _stop(self, status, payload):
        """Answer ``status`` in this request's turn, read nothing more, then close."""
        self.stopped = True
        self.transport.pause_reading()
        self.outstanding += 1
        self.pending.put_nowait((status, payload))

    # -- parser callbacks: they only fill the request --

    def on_message_begin(self):
        self.url = b""
        self.request = Request()

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        name = name.lower()
        request = self.request
        if name == b"host":
            request.hosts += 1
            request.host = value
        elif name == b"authorization":
            request.authorization = value
        elif name == b"content-type":
            request.content_type = value

    def on_body(self, body):
        self.request.body += body

    def on_message_complete(self):
        if self.stopped:
            return
        request = self.request
        request.path = httptools.parse_url(self.url).path.decode()
        request.method = self.parser.get_method().decode()
        request.keep_alive = self.parser.should_keep_alive()
        self.size = 0
        self.outstanding += 1
        # One request at a time: read the next when this one is answered.
        self.transport.pause_reading()
        self.pending.put_nowait(request)

    # -- answers, in order --

    def _refusal(self, request):
        """(status, payload) when ``request`` may not reach ``handle``, else None."""
        if request.hosts > 1:
            return 400, {"error": "more than one Host field"}
        if request.hosts and request.host.decode("latin-1").lower() not in self.hosts:
            return 421, {"error": "this admin listener does not answer for that Host (see admin.hosts)"}
        if request.method in READ_ONLY:
            return None
        settings = self.settings()
        return authorize(settings, request.authorization) or json_body(request.content_type, request.body)

    async def _answer(self):
        while True:
            item = await self.pending.get()
            if isinstance(item, tuple):  # a refusal queued by _stop: the last answer
                self.transport.write(render(*item, close=True))
                self.transport.close()
                return
            refusal = self._refusal(item)
            if refusal is not None:
                self.transport.write(render(*refusal, close=True))
                self.transport.close()
                return
            try:
                status, payload = await self.handle(item.method, item.path, item.body)
            except Exception:  # a bug of ours: answer it, never leave the client hanging
                log.exception("admin: %s %s failed", item.method, item.path)
                self.transport.write(render(500, {"error": "internal error"}, close=True))
                self.transport.close()
                return
            self.transport.write(render(status, payload, close=not item.keep_alive))
            if not item.keep_alive:
                self.transport.close()
                return
            self.outstanding -= 1
            self.since = self.loop.time()
            if not self.outstanding and not self.stopped:
                self.transport.resume_reading()

    def _check_idle(self):
        """Close a connection that has not sent a whole request ``idle`` seconds after it
        began waiting for one (not while it waits for an answer of ours: that is our time)."""
        loop = self.loop
        now = loop.time()
        if self.outstanding:
            self.since = now
        remaining = self.since + self.idle - now
        if remaining <= 0:
            self.timer = None
            self.transport.close()
            return
        self.timer = loop.call_later(remaining, self._check_idle)


async def start(ctx):
    """This worker's admin listener."""
    host, port = ctx.cfg.admin_address

    async def handle(method, path, body):
        router = ctx.router
        if method == "GET":
            if path == "/healthz":
                return 200, OK
            if path == "/readyz":
                return readiness(ctx.ready())
            if path == "/metrics":
                return 200, worker_metrics(router, ctx)
            if path == "/admin/backends":
                return 200, router.state()
        if method == "POST" and path.startswith("/admin/backends/"):
            return drain_action(router, path[len("/admin/backends/"):])
        return 404, {"error": f"no admin route {method} {path}"}

    def settings():
        return ctx.cfg.admin

    return await ctx.loop.create_server(
        lambda: AdminProtocol(handle, settings, host), host, port, reuse_address=True
    )


def worker_metrics(router, ctx=None):
    """/metrics of a process serving alone (no supervisor): its own counts."""
    rows = [metrics.endpoint_row(e.label, e.load(), e.requests, e.healthy, e.current_report()) for e in router.endpoints]
    observer = ctx.observe if ctx is not None else None
    merged = None
    if observer is not None and observer.owned:
        from ..observe.exposition import Totals

        merged = Totals().merged(observer.table)
    tenants = ctx.tenants.table if ctx is not None and ctx.tenants is not None else None
    return metrics.exposition(rows, workers=1, restarts=0, generation=1, cfg=ctx.cfg if ctx else None, merged=merged,
                              tenants=tenants)


def drain_action(router, rest):
    """``NAME/drain`` or ``NAME/undrain`` (the part after /admin/backends/)."""
    name, _, action = unquote(rest).rpartition("/")
    if action not in ("drain", "undrain") or not name:
        return 404, {"error": "use POST /admin/backends/NAME/drain or /undrain"}
    if not router.drain(name, action == "drain"):
        return 404, {"error": f"no backend named {name!r}", "backends": [e.label for e in router.endpoints]}
    endpoint = router.find(name)
    return 200, {"backend": name, "drained": endpoint.health.drained, "in_flight": endpoint.load()}
