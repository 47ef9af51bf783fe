"""The admin listener (its own port): liveness, readiness, backend state and drains, as JSON.

Off the data path and deliberately plain: one request at a time per connection, small
responses, close on anything unexpected.

Routes: ``GET /healthz``, ``GET /readyz``, ``GET /admin/backends`` (every backend with its
health, ejection, drain, in-flight and pool state; every pool with its policy, fallback chain
and eligible members; the retry budget), ``POST /admin/backends/NAME/drain`` and
``.../undrain`` (NAME is the backend's name, or host:port when it has none). A drained backend
takes no new requests; those in flight finish. Drains belong to the router of this process.
"""

import asyncio
from urllib.parse import unquote

import httptools
import orjson

from .errors import REASONS

_OK = {"status": "ok"}


def health_response(ready):
    """``GET /health`` on the data port and ``/readyz`` on the admin port."""
    return (200, _OK) if ready else (503, {"status": "unavailable", "reason": "no healthy backend"})


def json_response(body, request_id=b"", keep_alive=True):
    """A 200 with a JSON body built beforehand (``GET /v1/models`` on the data port)."""
    return b"".join(
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            b"x-request-id: " + request_id + b"\r\n" if request_id else b"",
            b"" if keep_alive else b"connection: close\r\n",
            b"\r\n",
            body,
        )
    )


PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


def response_bytes(status, payload, keep_alive=True):
    """A JSON response, or Prometheus text when ``payload`` is already bytes."""
    if isinstance(payload, bytes):
        body, content_type = payload, PROMETHEUS_TEXT
    else:
        body, content_type = orjson.dumps(payload), b"application/json"
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"OK") if status != 200 else b"OK"),
            b"content-type: %s\r\ncontent-length: %d\r\n" % (content_type, len(body)),
            b"" if keep_alive else b"connection: close\r\n",
            b"\r\n",
            body,
        )
    )


class AdminProtocol(asyncio.Protocol):
    """Plain HTTP/1.1 for admin listeners, one request at a time, answered in order.

    ``handle(method, path, body)`` is a coroutine returning (status, JSON-able payload); it may
    await (the supervisor fans requests out to its workers).
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
            self.transport.write(response_bytes(400, {"error": "malformed request"}, keep_alive=False))
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
            self.transport.write(response_bytes(status, payload, keep_alive))
            if not keep_alive:
                self.transport.close()
                return


async def start(ctx):
    """This worker's admin listener (a private port when a supervisor serves the public one)."""
    host, port = ctx.cfg.admin_address

    async def handle(method, path, body):
        if method == "GET":
            if path == "/healthz":
                return 200, _OK
            if path == "/readyz":
                return health_response(ctx.ready())
            if path == "/admin/backends":
                return 200, ctx.router.state()
        if method == "POST" and path.startswith("/admin/backends/"):
            return drain_action(ctx.router, path[len("/admin/backends/"):])
        return 404, {"error": f"no admin route {method} {path}"}

    return await ctx.loop.create_server(lambda: AdminProtocol(handle), host, port, reuse_address=True)


def drain_action(router, rest):
    """``NAME/drain`` or ``NAME/undrain`` (the part after /admin/backends/)."""
    name, _, action = unquote(rest).rpartition("/")
    if action not in ("drain", "undrain") or not name:
        return 404, {"error": "use POST /admin/backends/NAME/drain or /undrain"}
    if not router.drain(name, action == "drain"):
        return 404, {"error": f"no backend named {name!r}", "backends": [b.label for b in router.backends]}
    backend = router.find(name)
    return 200, {"backend": name, "drained": backend.health.drained, "in_flight": backend.load()}
