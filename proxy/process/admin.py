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
"""

import asyncio
from urllib.parse import unquote

import httptools

from ..http import responses
from . import metrics

OK = {"status": "ok"}


def readiness(ready):
    """``/readyz``: ready while this worker serves and any endpoint may take traffic."""
    return (200, OK) if ready else (503, {"status": "unavailable", "reason": "no healthy backend"})


def render(status, payload, close):
    """A JSON answer, or Prometheus text when ``payload`` is bytes already."""
    if isinstance(payload, bytes):
        return responses.response(status, payload, responses.PROMETHEUS_TEXT, close=close)
    return responses.json_response(status, payload, close=close)


class AdminProtocol(asyncio.Protocol):
    """Plain HTTP/1.1 for admin listeners, one request at a time, answered in order.

    ``handle(method, path, body)`` is a coroutine returning (status, payload): anything JSON
    encodes, or bytes of Prometheus text. It may await (the supervisor fans requests out).
    """

    def __init__(self, handle):
        self.handle = handle
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = b""
        self.pending = asyncio.Queue()
        self.task = None

    def connection_made(self, transport):
        self.transport = transport
        self.task = asyncio.get_running_loop().create_task(self._answer())

    def connection_lost(self, exc):
        self.task.cancel()

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(render(400, {"error": "malformed request"}, close=True))
            self.transport.close()

    def on_message_begin(self):
        self.url, self.body = b"", b""

    def on_url(self, url):
        self.url += url

    def on_body(self, body):
        self.body += body

    def on_message_complete(self):
        path = httptools.parse_url(self.url).path.decode()
        method = self.parser.get_method().decode()
        self.pending.put_nowait((method, path, self.body, self.parser.should_keep_alive()))

    async def _answer(self):
        while True:
            method, path, body, keep_alive = await self.pending.get()
            status, payload = await self.handle(method, path, body)
            self.transport.write(render(status, payload, close=not keep_alive))
            if not keep_alive:
                self.transport.close()
                return


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
                return 200, worker_metrics(router)
            if path == "/admin/backends":
                return 200, router.state()
        if method == "POST" and path.startswith("/admin/backends/"):
            return drain_action(router, path[len("/admin/backends/"):])
        return 404, {"error": f"no admin route {method} {path}"}

    return await ctx.loop.create_server(lambda: AdminProtocol(handle), host, port, reuse_address=True)


def worker_metrics(router):
    """/metrics of a process serving alone (no supervisor): its own counts."""
    rows = [metrics.endpoint_row(e.label, e.load(), e.requests, e.healthy, e.current_report()) for e in router.endpoints]
    return metrics.exposition(rows, workers=1, restarts=0, generation=1)


def drain_action(router, rest):
    """``NAME/drain`` or ``NAME/undrain`` (the part after /admin/backends/)."""
    name, _, action = unquote(rest).rpartition("/")
    if action not in ("drain", "undrain") or not name:
        return 404, {"error": "use POST /admin/backends/NAME/drain or /undrain"}
    if not router.drain(name, action == "drain"):
        return 404, {"error": f"no backend named {name!r}", "backends": [e.label for e in router.endpoints]}
    endpoint = router.find(name)
    return 200, {"backend": name, "drained": endpoint.health.drained, "in_flight": endpoint.load()}
