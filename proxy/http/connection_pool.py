"""The connection pool: one per endpoint, its keep-alive upstream connections.

How this works. ``conns`` holds every open connection to the endpoint, busy or idle, and is
bounded by ``max_connections``; ``idle`` is a LIFO stack (the most recently used connection is
the warmest and the least likely to have been closed by the backend's keep-alive timer). An
exchange first takes an idle connection synchronously (no task, no await: the hot path), else
opens one, else queues as a FIFO waiter. ``release`` hands a connection straight to the oldest
waiter. A connection goes back only after a response read to its end with keep-alive; every
other exit closes it (see ``exchange.Exchange.finish``). Idle connections older than
``pool_idle`` are closed before the backend's own timer can race us.

Waiting is bounded and visible. A full pool means the endpoint already carries
``max_connections`` requests; a request that waits behind them waits for a whole generation
to end, which can be minutes. So at most ``max_waiters`` requests wait, each at most
``pool_wait`` seconds (the first wait sets the deadline; a waiter woken to open a connection
that it then cannot open keeps its place and its deadline); beyond either, ``PoolBusy`` (a 503
with ``Retry-After``: the client, or the exchange on another endpoint, may try again soon).
``stats`` counts the waits, their time-outs and the refusals, and the first wait of a pool is
logged once, so a pool bound that is too small shows itself instead of silently adding latency.

A waiter is a future resolved by ``release`` (a connection), ``_wake`` (``None``: a slot is
free, open one) or its own timer (``_EXPIRED``); whichever comes first wins, synchronously, so
a connection is never handed to a waiter that already gave up, and a waiter cancelled after
being handed one (its client left) passes it on.

A spare is ready before it is needed. When a request takes the last idle connection (or opens
one), the pool opens ``spare`` more in the background, within ``max_connections``: on a pool
that has to grow (a burst above the last peak, or connections the idle timer closed) the next
request then finds one connected instead of spending a handshake and a few loop turns on its
first byte. Only a request's take tops the spare up, so a quiet or failing backend is not
reconnected to on a timer; a spare that fails to open is dropped silently (the next request
that needs it will connect, and fail, for itself).

TLS (https endpoints) is the transport's business: the pool opens its connections with the
endpoint's ``ssl`` context and ``server_hostname`` (SNI and the name verified); nothing else
changes. ``close`` is graceful: idle connections close now, busy ones when they are released,
so a config reload drains an old pool without cutting a stream.
"""

import asyncio
import logging
from collections import deque

from ..observe.metrics import clock, now
from .errors import NoBackend
from .upstream import UpstreamConnection

log = logging.getLogger("fleetproxy.pool")

RETRY_AFTER = 1  # s: what a refused request is told; streams end and free connections within seconds
_EXPIRED = object()  # a waiter's result when its pool_wait ran out


class PoolBusy(NoBackend):
    """No connection within the pool's bounds (too many waiters, or waited too long): a 503
    with ``Retry-After``. The client is not at fault and may retry; nothing reached the backend."""

    retry_after = RETRY_AFTER


class ConnectionPool:
    __slots__ = (
        "loop", "host", "port", "max_connections", "max_idle", "idle_timeout",
        "connect_timeout", "high_water", "conns", "idle", "waiters", "opened", "ssl",
        "server_hostname", "closing", "max_waiters", "wait_timeout", "queued", "wait_timeouts",
        "refused", "spare", "opening", "spares",
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
        self.max_waiters = cfg.connection_pool.max_waiters
        self.wait_timeout = cfg.timeouts.pool_wait
        self.conns = set()
        self.idle = []  # a stack: appended and popped at its end
        self.waiters = deque()
        self.opened = 0  # connections ever opened (tests read it to see reuse)
        self.queued = 0  # requests that had to wait for a connection
        self.wait_timeouts = 0  # of those, the ones that waited pool_wait in vain
        self.refused = 0  # requests refused at once: max_waiters were waiting already
        self.spare = cfg.connection_pool.spare
        self.opening = 0  # spares being opened
        self.spares = set()  # their tasks (held: the loop keeps only weak references)

    def take_idle(self):
        """An idle connection ready for a request, or None. Never awaits."""
        idle = self.idle
        if not idle:
            return None
        t = now()  # this read callback's time (metrics.hold), or a read of the clock
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if t - conn.idle_since > self.idle_timeout:
                conn.close()
                continue
            if len(idle) + self.opening < self.spare:
                self._top_up()
            return conn
        return None

    def _top_up(self):
        """Open connections in the background until ``spare`` are idle or opening."""
        while (
            len(self.idle) + self.opening < self.spare and len(self.conns) + self.opening < self.max_connections
            and not self.closing
        ):
            self.opening += 1
            task = self.loop.create_task(self._open_spare())
            self.spares.add(task)
            task.add_done_callback(self.spares.discard)

    async def _open_spare(self):
        try:
            if len(self.conns) >= self.max_connections or self.closing:
                return  # requests opened what the bound allows since this was asked for
            conn = await self._open()
        except Exception:
            return  # a request that needs it connects, and fails, for itself
        finally:
            self.opening -= 1
        self.release(conn)

    async def acquire(self):
        """A connection: idle, new, or the next one released. Raises OSError/TimeoutError
        (connecting), or PoolBusy (see the module docstring)."""
        deadline = None
        while True:
            conn = self.take_idle()
            if conn is not None:
                return conn
            if len(self.conns) < self.max_connections:
                conn = await self._open()
                self._top_up()
                return conn
            loop = self.loop
            now = loop.time()
            if deadline is None:
                if len(self.waiters) >= self.max_waiters:
                    self.refused += 1
                    raise PoolBusy("the backend is at its connection limit and too many requests wait; retry later")
                if not self.queued:
                    log.warning(
                        "connection pool of %s:%d is full (%d connections): requests now wait for a connection "
                        "(at most %d at once, %.3g s each); this is logged once per pool",
                        self.host, self.port, self.max_connections, self.max_waiters, self.wait_timeout,
                    )
                self.queued += 1
                deadline = now + self.wait_timeout
                waiter = loop.create_future()
                self.waiters.append(waiter)
            else:
                # Woken to open a connection that another request took first: keep its place.
                waiter = loop.create_future()
                self.waiters.appendleft(waiter)
            timer = loop.call_later(max(0.0, deadline - now), self._expire, waiter)
            try:
                conn = await waiter
            except BaseException:  # cancelled: the request ended while it waited
                self._abandon(waiter)
                raise
            finally:
                timer.cancel()
            if conn is _EXPIRED:
                self.wait_timeouts += 1
                raise PoolBusy("timed out waiting for a connection to the backend; retry later")
            if conn is not None and not conn.closed:
                return conn
            # None: a slot was freed; loop to open one.

    def _expire(self, waiter):
        if not waiter.done():
            waiter.set_result(_EXPIRED)
            self._unqueue(waiter)

    def _unqueue(self, waiter):
        try:
            self.waiters.remove(waiter)  # O(waiters), bounded by max_waiters, off the hot path
        except ValueError:
            pass

    def _abandon(self, waiter):
        """A waiter's request ended; if it was handed a connection or a free slot, pass it on."""
        self._unqueue(waiter)
        if waiter.done() and not waiter.cancelled():
            handed = waiter.result()
            if handed is None:
                self._wake()
            elif handed is not _EXPIRED:
                self.release(handed)

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
            async with asyncio.timeout(self.connect_timeout):
                await connect
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
        conn.idle_since = now()
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
        deadline = clock() - self.idle_timeout
        while self.idle and self.idle[0].idle_since < deadline:
            self.idle.pop(0).close()

    def close(self):
        """Close idle connections now and busy ones as they are released (graceful)."""
        self.closing = True
        while self.idle:
            self.idle.pop().close()

    def abort(self):
        """Close every connection now, busy ones included."""
        self.closing = True
        for task in list(self.spares):
            task.cancel()
        for conn in list(self.conns):
            conn.close()
        self.idle.clear()

    def stats(self):
        return {
            "open": len(self.conns),
            "idle": len(self.idle),
            "waiting": len(self.waiters),
            "max_waiters": self.max_waiters,
            "queued": self.queued,
            "wait_timeouts": self.wait_timeouts,
            "refused": self.refused,
            "opened": self.opened,
            "spare": self.spare,
            "tls": self.ssl is not None,
            "closing": self.closing,
        }
