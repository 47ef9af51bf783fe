"""A small streaming HTTP/1.1 client for the bench's own load generators (scenarios c, d, e).

How it works: one `asyncio.Protocol` per keep-alive connection, llhttp (httptools) parsing the
response, and the de-chunked body scanned for SSE event boundaries (a blank line) as it arrives.
Each request records when its first token and each later token arrived, so time to first token
(TTFT), inter-token latency (ITL) and end-to-end latency come from one place. Times are
`time.perf_counter()` seconds: uvloop's `loop.time()` only ticks in milliseconds. A token is an
event whose delta carries non-empty content: vLLM sends the role chunk with the first token, so
the first content event marks the end of prefill as the client sees it.

Errors a run counts: a non-2xx status, a socket error or early close, an in-band error event, a
stream that ends without `data: [DONE]`, and a request not done within its timeout.
"""

from __future__ import annotations

import asyncio
from time import perf_counter

import httptools

EVENT_END = b"\n\n"
DONE = b"data: [DONE]"


def _has_content(event: bytes) -> bool:
    """Whether an event's delta carries text: `"content":"x..."`, with or without a space."""
    i = event.find(b'"content":')
    if i < 0:
        return False
    rest = event[i + 10:i + 13].lstrip()
    return rest[:1] == b'"' and rest[1:2] != b'"'


class Result:
    __slots__ = ("start", "first", "last", "tokens", "gaps", "status", "error", "backend", "content", "sent",
                 "sim_received", "sim_sent")

    def __init__(self, start: float):
        self.start = start  # when the request was due (open loop) or sent (closed loop)
        self.first = 0.0  # first token arrived
        self.last = 0.0  # response complete
        self.tokens = 0
        self.gaps: list[float] = []  # seconds between consecutive tokens
        self.status = 0
        self.error: str | None = None
        self.backend = b""  # x-sim-backend, for the routing scenario
        self.content = 0  # completion characters seen (bytes of the event payloads)
        self.sent = 0.0  # the request written to the socket
        # The simulator's stamps (x-sim-stamp), on this host's perf_counter: the request's
        # arrival there and the first token's departure; 0.0 where it sent none.
        self.sim_received = 0.0
        self.sim_sent = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.result: Result | None = None
        self.done: asyncio.Future | None = None
        self.buf = b""
        self.saw_done = False
        self.closed = False
        self.reusable = True
        self._header = b""

    # -- transport callbacks

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish("upgrade")
        except httptools.HttpParserError as e:
            self._finish(f"bad response: {e}")

    def connection_lost(self, exc):
        self.closed = True
        if self.done is not None and not self.done.done():
            self._finish("connection closed" if exc is None else f"socket: {exc}")

    # -- parser callbacks

    def on_header(self, name, value):
        name = name.lower()
        if name == b"x-sim-backend":
            self.result.backend = bytes(value)
        elif name == b"x-sim-received-ns":
            self.result.sim_received = int(value) / 1e9
        elif name == b"x-sim-sent-ns":
            self.result.sim_sent = int(value) / 1e9

    def on_headers_complete(self):
        self.result.status = self.parser.get_status_code()
        self.reusable = self.parser.should_keep_alive()

    def on_body(self, body):
        now = perf_counter()
        buf = self.buf + body if self.buf else bytes(body)
        r = self.result
        start = 0
        while True:
            end = buf.find(EVENT_END, start)
            if end < 0:
                break
            event = buf[start:end]
            start = end + 2
            if event.startswith(DONE):
                self.saw_done = True
            elif _has_content(event):
                if r.tokens:
                    r.gaps.append(now - r.last)
                else:
                    r.first = now
                r.tokens += 1
                r.last = now
                r.content += len(event)
            elif b'"error"' in event:
                r.error = "in-band error event"
        self.buf = buf[start:]

    def on_message_complete(self):
        r = self.result
        r.last = perf_counter()
        if not 200 <= r.status < 300:
            self._finish(f"status {r.status}")
        elif r.error is None and not self.saw_done:
            self._finish("stream ended without [DONE]")
        else:
            self._finish(r.error)

    def _finish(self, error: str | None):
        r = self.result
        if r is not None and r.error is None:
            r.error = error
        if error is not None:
            self.reusable = False
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # -- the request

    def send(self, head: bytes, body: bytes, result: Result) -> asyncio.Future:
        self.result = result
        self.buf = b""
        self.saw_done = False
        self.done = self.loop.create_future()
        result.sent = perf_counter()
        self.transport.write(head + body)
        return self.done


class Client:
    """Keep-alive connections to one target; a request takes an idle one or opens another."""

    def __init__(self, url: str, timeout: float = 60.0):
        host_port = url.removeprefix("http://").rstrip("/")
        self.host, _, port = host_port.partition(":")
        self.port = int(port or 80)
        self.authority = host_port.encode()
        self.timeout = timeout
        self.idle: list[_Conn] = []
        self.loop = asyncio.get_running_loop()
        self.open = 0  # connections opened, a sign of how concurrent the load got

    def head(self, path: str, body: bytes, extra: dict[str, str] | None = None) -> bytes:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.authority.decode()}",
                 "Content-Type: application/json", "Accept: text/event-stream",
                 f"Content-Length: {len(body)}"]
        for k, v in (extra or {}).items():
            lines.append(f"{k}: {v}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def stream(self, head: bytes, body: bytes, result: Result) -> Result:
        """Send one request whose response is an event stream; fill ``result``."""
        conn = None
        try:
            conn = self.idle.pop() if self.idle else None
            if conn is None or conn.closed:
                _, conn = await self.loop.create_connection(lambda: _Conn(self.loop), self.host, self.port)
                self.open += 1
            await asyncio.wait_for(conn.send(head, body, result), self.timeout)
        except asyncio.TimeoutError:
            result.error = f"timeout after {self.timeout:.0f} s"
        except OSError as e:
            result.error = f"socket: {e}"
        finally:
            if conn is not None:
                if result.error is None and conn.reusable and not conn.closed:
                    self.idle.append(conn)
                elif conn.transport is not None:
                    conn.transport.abort()
        return result

    def close(self) -> None:
        for conn in self.idle:
            conn.transport.close()
        self.idle.clear()
