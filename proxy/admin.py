"""The admin listener (its own port): liveness, readiness and backend state, as JSON.

Off the data path and deliberately plain: one request at a time per connection, small
responses, close on anything unexpected.
"""

import asyncio

import httptools
import orjson

from .errors import REASONS

_OK = {"status": "ok"}


def health_response(ready):
    """``GET /health`` on the data port and ``/readyz`` on the admin port."""
    return (200, _OK) if ready else (503, {"status": "unavailable", "reason": "no healthy backend"})


def response_bytes(status, payload, keep_alive=True):
    body = orjson.dumps(payload)
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"OK") if status != 200 else b"OK"),
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            b"" if keep_alive else b"connection: close\r\n",
            b"\r\n",
            body,
        )
    )


class AdminProtocol(asyncio.Protocol):
    def __init__(self, routes):
        self.routes = routes  # {(method, path): callable() -> (status, payload)}
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(response_bytes(400, {"error": "malformed request"}, keep_alive=False))
            self.transport.close()

    def on_message_begin(self):
        self.url = b""

    def on_url(self, url):
        self.url += url

    def on_message_complete(self):
        path = httptools.parse_url(self.url).path.decode()
        method = self.parser.get_method().decode()
        handler = self.routes.get((method, path))
        if handler is None:
            status, payload = 404, {"error": f"no admin route {method} {path}"}
        else:
            status, payload = handler()
        keep_alive = self.parser.should_keep_alive()
        self.transport.write(response_bytes(status, payload, keep_alive))
        if not keep_alive:
            self.transport.close()


async def start(ctx):
    host, port = ctx.cfg.admin_address
    routes = {
        ("GET", "/healthz"): lambda: (200, _OK),
        ("GET", "/readyz"): lambda: health_response(ctx.ready()),
        ("GET", "/admin/backends"): lambda: (200, {"backends": [b.state() for b in ctx.router.backends]}),
    }
    return await ctx.loop.create_server(lambda: AdminProtocol(routes), host, port, reuse_address=True)
