"""The prober's GETs (health checks, load scrapes): one kept-alive connection per endpoint, a
small ``asyncio.Protocol`` over llhttp's response parser.

Why not asyncio streams and a new connection per check. The prober runs all the time, with or
without traffic: every worker checks every backend every ``health.interval`` and scrapes the
loads twice a second while only streams flow: on one idle worker in front of one simulator,
most of its CPU. A check opened a connection of its own each time (connect, accept, close, a
TIME_WAIT left on the proxy's side) and a scrape read through StreamReader; this protocol reads
an answer in one callback per read, and a check reuses its connection as Envoy's do
(``reuse_connection``): warm, a scrape 102 -> 40 us, a check 157 -> 23 us. (Most of what is
left is the wakeups themselves: ``proxy/periodic.py``.) A backend that stops accepting new
connections still fails here the moment the kept one breaks, and at once on the data path,
whose connect errors eject it (passive checks).
"""

import asyncio
import logging

import httptools

log = logging.getLogger("fleetproxy.health")


class Fetcher:
    """GETs over one kept-alive connection per endpoint. A connection the server closed while
    idle is noticed when it closes (the transport keeps reading) and replaced at the next GET;
    one closed under a request is retried once on a new connection (a GET is safe to repeat)."""

    def __init__(self, limit=4 << 20):
        self.conns = {}  # endpoint -> _Conn, idle
        self.limit = limit  # bytes of body kept at most, past them the answer is refused; 0: none kept

    async def get(self, endpoint, path, timeout):
        """(status, body) of ``GET path`` on ``endpoint`` within ``timeout`` seconds, or None
        when none came (refused, reset, timed out, malformed, too large)."""
        conn = self.conns.pop(endpoint, None)
        request = b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), endpoint.authority)
        try:
            async with asyncio.timeout(timeout):
                if conn is not None and conn.transport is not None:
                    try:
                        answer = await conn.get(request)
                    except ConnectionError:
                        conn = None  # closed as we asked: once more, on a new connection
                    else:
                        return self._done(endpoint, conn, answer)
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: _Conn(self.limit), endpoint.host, endpoint.port,
                    ssl=endpoint.ssl, server_hostname=endpoint.server_hostname)
                return self._done(endpoint, conn, await conn.get(request))
        except (OSError, TimeoutError, ValueError):
            pass
        except Exception as exc:  # a bug of ours: this GET failed, the next one runs
            log.warning("GET %s of %s:%d raised %r", path, endpoint.host, endpoint.port, exc)
        if conn is not None:
            conn.close()
        return None

    def _done(self, endpoint, conn, answer):
        if conn.keep:
            self.conns[endpoint] = conn
        else:
            conn.close()
        return answer

    def keep_only(self, endpoints):
        """Close the connections of endpoints no longer in ``endpoints``."""
        if self.conns:
            keep = set(endpoints)  # a fleet's hundreds of endpoints, every round: not a list's scan each
            for endpoint in [e for e in self.conns if e not in keep]:
                self.conns.pop(endpoint).close()

    def close(self):
        self.keep_only(())


class _Conn(asyncio.Protocol):
    """One connection: at most one GET at a time, its answer read by llhttp as it arrives."""

    def __init__(self, limit):
        self.limit = limit
        self.transport = None  # None once closed
        self.parser = httptools.HttpResponseParser(self)
        self.waiter = None  # the pending GET's future
        self.parts = []
        self.size = 0
        self.keep = False
        self.headed = False  # the answer's head has been read
        self.delimited = False  # the answer has a length or chunks (else it ends at the close)

    def connection_made(self, transport):
        self.transport = transport

    def get(self, request):
        self.waiter = asyncio.get_running_loop().create_future()
        self.parts = []
        self.size = 0
        self.keep = False
        self.headed = self.delimited = False
        self.transport.write(request)
        return self.waiter

    def close(self):
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data):
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted again
            return
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # llhttp's errors, an upgrade, a body past the limit
            self._fail(ValueError(f"a malformed answer: {exc!r}"))

    def connection_lost(self, exc):
        self.transport = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.headed and not self.delimited:
            self._finish()  # an answer without a length ends here
        else:
            waiter.set_exception(ConnectionResetError("closed under a request"))

    def _fail(self, exc):
        self.keep = False
        if not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    # llhttp's callbacks
    def on_message_begin(self):
        if self.waiter.done():
            raise ValueError("an answer nobody asked for")

    def on_header(self, name, value):
        if len(name) in (14, 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            self.delimited = True

    def on_headers_complete(self):
        self.headed = True

    def on_body(self, body):
        if not self.limit:
            return  # a health check reads the status only
        self.size += len(body)
        if self.size > self.limit:
            raise ValueError(f"an answer past {self.limit} bytes")
        self.parts.append(body)

    def on_message_complete(self):
        self.keep = self.parser.should_keep_alive()
        self._finish()

    def _finish(self):
        if not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.parts)))
