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
    def __init__(self, routes, prefixes=()):
        self.routes = routes  # {(method, path): callable() -> (status, payload)}
        self.prefixes = prefixes  # ((method, path prefix, callable(rest) -> (status, payload)), ...)
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
        if handler is not None:
            status, payload = handler()
        else:
            status, payload = 404, {"error": f"no admin route {method} {path}"}
            for m, prefix, prefixed in self.prefixes:
                if m == method and path.startswith(prefix):
                    status, payload = prefixed(path[len(prefix):])
                    break
        keep_alive = self.parser.should_keep_alive()
        self.transport.write(response_bytes(status, payload, keep_alive))
        if not keep_alive:
            self.transport.close()


async def start(ctx):
    host, port = ctx.cfg.admin_address
    routes = {
        ("GET", "/healthz"): lambda: (200, _OK),
        ("GET", "/readyz"): lambda: health_response(ctx.ready()),
        ("GET", "/admin/backends"): lambda: (200, ctx.router.state()),
    }
    prefixes = (("POST", "/admin/backends/", lambda rest: drain_action(ctx.router, rest)),)
    return await ctx.loop.create_server(lambda: AdminProtocol(routes, prefixes), host, port, reuse_address=True)


def drain_action(router, rest):
    """``NAME/drain`` or ``NAME/undrain`` (the part after /admin/backends/)."""
    name, _, action = unquote(rest).rpartition("/")
    if action not in ("drain", "undrain") or not name:
        return 404, {"error": "use POST /admin/backends/NAME/drain or /undrain"}
    if not router.drain(name, action == "drain"):
        return 404, {"error": f"no backend named {name!r}", "backends": [b.label for b in router.backends]}
    backend = router.find(name)
    return 200, {"backend": name, "drained": backend.health.drained, "in_flight": backend.load()}
