"""The simulator's HTTP/1.1 server: an asyncio.Protocol fed by httptools.

How it works: `data_received` feeds the parser; its callbacks fill a Request.
A complete request goes to `Api.handle`, which either answers on the spot
(the ttft=itl=0 fast path: no task, no await) or returns a coroutine that runs
as this connection's one task. Requests that arrive while a task runs wait in
`_pending` and are answered in order, so a pipelining client still works.

A client that goes away cancels the task: that is how an abort reaches the
engine, exactly when vLLM would notice it (queued, before the first token,
mid-stream, or while a non-streaming reply is being generated).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    from .api import Api

log = logging.getLogger("fleetproxy.sim")

MAX_BODY = 64 * 1024 * 1024  # bytes; a larger request body is refused (400, close)
MAX_PENDING = 16  # pipelined requests held while one runs; then stop reading
JSON = b"application/json"

STATUS_LINE = {s.value: b"HTTP/1.1 %d %b\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
SERVER = b"server: fleetproxy-sim\r\n"
VARY = b"vary: Origin\r\n"  # vLLM's CORS middleware puts it on every response

_date_second = 0
_date_line = b""


def date_line() -> bytes:
    """The `date` header, formatted at most once a second."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = b"date: %b\r\n" % formatdate(now, usegmt=True).encode()
    return _date_line


class Request:
    __slots__ = ("method", "path", "headers", "body", "keep_alive", "extra")

    def __init__(self, method: bytes, path: bytes, headers: dict[bytes, bytes],
                 body: bytes, keep_alive: bool, extra: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers  # lower-cased names; the last value wins
        self.body = body
        self.keep_alive = keep_alive
        self.extra = extra  # response header lines: x-request-id, x-sim-backend


class Connection(asyncio.Protocol):
    __slots__ = (
        "api", "echo_request_id", "stats", "conns", "backend_line", "transport", "parser", "loop",
        "_url", "_headers", "_body", "_body_size", "_task", "_current",
        "_pending", "_broken", "_paused", "_drain", "_reading", "_keep_alive", "_idle_timer",
    )

    def __init__(self, api: Api, conns: set[Connection], backend_line: bytes) -> None:
        self.api = api
        self.echo_request_id = api.cfg.request_id_headers
        self.stats = api.stats
        self.conns = conns
        self.backend_line = backend_line
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_running_loop()
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._task: asyncio.Task[None] | None = None
        self._current: Request | None = None
        self._pending: deque[Request | None] = deque()  # None: answer 400, close
        self._broken = False
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self._reading = True
        self._keep_alive = api.cfg.keep_alive_timeout
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- transport events ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stats.connections += 1
        self.stats.connections_open += 1
        self.conns.add(self)
        self._await_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.connections_open -= 1
        self.conns.discard(self)
        self._pending.clear()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._task is not None:
            self._task.cancel()  # the client left: abort the generation
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no upgrades here; the request itself was already handled
        except httptools.HttpParserError:
            self._broken = True
            self._enqueue(None)

    def eof_received(self) -> bool:
        return False  # like uvicorn: a half-close ends the connection

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- parser callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        expect = self._headers.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and self._idle():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY:
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = self._url
        q = url.find(b"?")
        extra = self.backend_line
        if self.echo_request_id:  # vLLM's --enable-request-id-headers; else none
            rid = self._headers.get(b"x-request-id") or uuid.uuid4().hex.encode()
            extra = b"x-request-id: " + rid + b"\r\n" + extra
        keep_alive = self.parser.should_keep_alive()
        if keep_alive and self.parser.get_http_version() == "1.0":
            extra += b"connection: keep-alive\r\n"  # 1.0 closes unless told otherwise
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        req = Request(self.parser.get_method(), url if q < 0 else url[:q], self._headers,
                      body, keep_alive, extra)
        self._enqueue(req)

    # -- request sequencing ----------------------------------------------------

    def _idle(self) -> bool:
        return self._task is None and not self._pending

    def _enqueue(self, req: Request | None) -> None:
        if self._idle():
            self._run(req)
            return
        self._pending.append(req)
        if len(self._pending) >= MAX_PENDING and self._reading:
            self._reading = False
            self.transport.pause_reading()

    def _run(self, req: Request | None) -> None:
        """Answer req and every pending request that can be answered without waiting."""
        while True:
            if req is None:
                self.send_error(400, b'{"detail":"Invalid HTTP request"}', close=True)
                return
            self._current = req
            coro = self.api.handle(req, self)
            if coro is not None:
                self._task = self.loop.create_task(coro)
                self._task.add_done_callback(self._on_task_done)
                return
            if not self._after_response(req):
                return
            if not self._pending:
                self._await_next()
                return
            req = self._pending.popleft()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("sim request failed", exc_info=exc)
            self.transport.abort()
            return
        if self._after_response(self._current):
            if self._pending:
                self._run(self._pending.popleft())
            else:
                self._await_next()

    def _await_next(self) -> None:
        """Idle, the connection waits keep_alive_timeout for its next request (uvicorn's
        keep-alive timer), then closes."""
        if self._keep_alive > 0 and self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self._keep_alive, self._idle_close)

    def _idle_close(self) -> None:
        self._idle_timer = None
        if self._idle() and self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _after_response(self, req: Request) -> bool:
        """Close if the request or the reply ended the connection; say if it goes on."""
        if self.transport.is_closing():
            return False
        if not req.keep_alive:
            self.transport.close()
            return False
        if not self._reading and len(self._pending) < MAX_PENDING // 2:
            self._reading = True
            self.transport.resume_reading()
        return True

    # -- what handlers call ------------------------------------------------------

    def head(self, status: int, req: Request, content_type: bytes | None,
             length: int | None = None, before: bytes = b"") -> bytes:
        """Status line and headers; `length=None` means a chunked body follows.

        Header order is uvicorn's as vLLM sends it: date, server, the route's own
        headers (`before`), content-length, content-type, vary, x-request-id,
        connection, and transfer-encoding last.
        """
        close = b"" if req.keep_alive else b"connection: close\r\n"
        ctype = b"" if content_type is None else b"content-type: %b\r\n" % content_type
        if length is None:
            return b"%b%b%b%b%b%b%b%btransfer-encoding: chunked\r\n\r\n" % (
                STATUS_LINE[status], date_line(), SERVER, before, ctype, VARY, req.extra, close)
        return b"%b%b%b%bcontent-length: %d\r\n%b%b%b%b\r\n" % (
            STATUS_LINE[status], date_line(), SERVER, before, length, ctype, VARY, req.extra,
            close)

    def respond(self, status: int, req: Request, body: bytes,
                content_type: bytes | None = JSON, before: bytes = b"") -> None:
        head = self.head(status, req, content_type, len(body), before)
        self.transport.write(head if req.method == b"HEAD" else head + body)

    def send_error(self, status: int, body: bytes, close: bool = False) -> None:
        """An error outside any request (malformed bytes): answer and maybe close."""
        head = b"%b%b%bcontent-length: %d\r\ncontent-type: application/json\r\n%b" % (
            STATUS_LINE[status], date_line(), SERVER, len(body), VARY
        )
        self.transport.write(head + (b"connection: close\r\n\r\n" if close else b"\r\n") + body)
        if close:
            self.transport.close()

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    @property
    def paused(self) -> bool:
        return self._paused

    async def drain(self) -> None:
        """Wait while the client is not reading (transport above its high-water mark)."""
        if self._paused and not self.transport.is_closing():
            self._drain = self.loop.create_future()
            await self._drain

    def die(self) -> None:
        """End the connection abruptly, yet deliver what was already written."""
        if self.transport.get_write_buffer_size() == 0:
            self.transport.abort()
        else:
            self.transport.close()

    def close(self) -> None:
        self.transport.close()
