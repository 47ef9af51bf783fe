"""The connection pool: one per endpoint, its keep-alive upstream connections.

How this works. ``conns`` holds every open connection to the endpoint, busy or idle, and is
bounded by ``max_connections``; ``idle`` is a LIFO stack (the most recently used connection is
the warmest and the least likely to have been closed by the backend's keep-alive timer). An
exchange first takes an idle connection synchronously (no task, no await: the hot path), else
opens one, else queues as a FIFO waiter. ``release`` hands a connection straight to the oldest
waiter. A connection goes back only after a response read to its end with keep-alive; every
other exit closes it (see ``exchange.Exchange.finish``). Idle connections older than
``pool_idle`` are closed before the backend's own timer can race us.

TLS (https endpoints) is the transport's business: the pool opens its connections with the
endpoint's ``ssl`` context and ``server_hostname`` (SNI and the name verified); nothing else
changes. ``close`` is graceful: idle connections close now, busy ones when they are released,
so a config reload drains an old pool without cutting a stream.
"""

import asyncio
from collections import deque

from .upstream import UpstreamConnection


class ConnectionPool:
    __slots__ = (
        "loop", "host", "port", "max_connections", "max_idle", "idle_timeout",
        "connect_timeout", "high_water", "conns", "idle", "waiters", "opened", "ssl",
        "server_hostname", "closing",
    )

    def __init__(self, loop, host, port, cfg, ssl=None, server_hostname=None):
        self.loop = loop
        self.host = host
        self.port = port
        self.ssl = ssl  # an ssl.SSLContext for https backends, else None
        self.server_hostname = server_hostname if ssl is not None else None
        self.closing = False
        self.max_connections = cfg.connection_pool.max_connections
        self.max_idle = cfg.connection_pool.max_idle
        self.idle_timeout = cfg.timeouts.pool_idle
        self.connect_timeout = cfg.timeouts.connect
        self.high_water = cfg.limits.high_water
        self.conns = set()
        self.idle = deque()
        self.waiters = deque()
        self.opened = 0  # connections ever opened (tests read it to see reuse)

    def take_idle(self):
        """An idle connection ready for a request, or None. Never awaits."""
        idle = self.idle
        if not idle:
            return None
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self.idle_timeout:
                conn.close()
                continue
            return conn
        return None

    async def acquire(self):
        """A connection: idle, new, or the next one released. Raises OSError/TimeoutError."""
        while True:
            conn = self.take_idle()
            if conn is not None:
                return conn
            if len(self.conns) < self.max_connections:
                return await self._open()
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                conn = await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
            if conn is not None and not conn.closed:
                return conn
            # None: a slot was freed; loop to open one.

    async def _open(self):
        conn = UpstreamConnection(self)
        self.conns.add(conn)  # reserve the slot while connecting
        try:
            if self.ssl is None:
                connect = self.loop.create_connection(lambda: conn, self.host, self.port)
            else:
                connect = self.loop.create_connection(
                    lambda: conn, self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname
                )
            await asyncio.wait_for(connect, self.connect_timeout)
        except BaseException:
            self.conns.discard(conn)
            self._wake()
            raise
        self.opened += 1
        return conn

    def release(self, conn):
        """Give back a connection whose response was read to its end."""
        conn.exchange = None
        if conn.closed:
            return
        if self.closing:
            conn.close()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def forget(self, conn):
        """The connection closed (either side): free its slot."""
        if conn in self.conns:
            self.conns.discard(conn)
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
            self._wake()

    def _wake(self):
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def sweep(self):
        """Close idle connections past their time; called about once a second."""
        if not self.idle:
            return
        deadline = self.loop.time() - self.idle_timeout
        while self.idle and self.idle[0].idle_since < deadline:
            self.idle.popleft().close()

    def close(self):
        """Close idle connections now and busy ones as they are released (graceful)."""
        self.closing = True
        while self.idle:
            self.idle.pop().close()

    def abort(self):
        """Close every connection now, busy ones included."""
        self.closing = True
        for conn in list(self.conns):
            conn.close()
        self.idle.clear()

    def stats(self):
        return {
            "open": len(self.conns),
            "idle": len(self.idle),
            "waiting": len(self.waiters),
            "opened": self.opened,
            "tls": self.ssl is not None,
            "closing": self.closing,
        }
