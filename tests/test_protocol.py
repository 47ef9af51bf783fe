"""The client protocol against a mock transport, in this process: what happens when our own
code fails inside a transport callback. (The wire itself is tested on real sockets in
test_proxy.py; here we need to make the proxy's code raise on purpose.)"""

import asyncio
import json
import logging

from _speedups import ResponseFramer
from proxy.config import build
from proxy.http.downstream import Downstream
from proxy.http.connection_pool import ConnectionPool
from proxy.http.exchange import Exchange
from proxy.http.upstream import UpstreamConnection
from proxy.process.worker import Context
from proxy.routing.endpoint import Endpoint
from proxy.routing.router import Router, Selection


class MockTransport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.data = b""
        self.closed = False
        self.reading = True

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def write(self, data):
        assert not self.closed, "write after close"
        self.data += data

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True


CONFIG = {"backends": ["http://127.0.0.1:9"]}


class BrokenRouter(Router):
    """A router with a bug: every selection raises."""

    def select(self, headers, body):
        raise RuntimeError("bug in routing")


def connect(router_class, loop):
    cfg = build(CONFIG)
    ctx = Context(cfg, loop, router_class(cfg, loop))
    down = Downstream(ctx)
    transport = MockTransport()
    down.connection_made(transport)
    return ctx, down, transport


REQUEST = b"POST /v1/completions HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n{}"


def test_a_bug_before_the_response_is_a_500_and_a_close(caplog):
    async def main():
        ctx, down, transport = connect(BrokenRouter, asyncio.get_running_loop())
        with caplog.at_level(logging.ERROR, "fleetproxy"):
            down.data_received(REQUEST + REQUEST)  # the second, pipelined, is dropped with it
        assert transport.closed and down.active is None and not down.queue
        head, _, body = transport.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 500 ") and b"connection: close" in head
        error = json.loads(body)["error"]
        assert error["code"] == 500 and error["type"] == "internal_error"
        assert transport.data.count(b"HTTP/1.1") == 1
        down.connection_lost(None)
        assert down not in ctx.connections

    asyncio.run(main())
    crashes = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(crashes) == 1 and crashes[0].exc_info is not None  # logged once, with its traceback


class BuggyExchange(Exchange):
    """The real pump, with a bug after it forwarded what it read."""

    __slots__ = ()

    def upstream_data(self, data):
        Exchange.upstream_data(self, data)
        raise RuntimeError("bug in the pump")


class StubEndpoint(Endpoint):
    """An Endpoint (the compiled exchange holds its endpoint typed) with nothing behind it."""

    __slots__ = ()

    def __init__(self):
        self.label = "b0"

    def answered(self, status, loop):
        pass

    def failed(self, now):
        pass


class StubSelection(Selection):
    """A Selection (the compiled exchange holds its selection typed) that counts its releases."""

    def __init__(self):
        Selection.__init__(self, [], b"", False)
        self.endpoint = StubEndpoint()
        self.released = 0

    def release(self):
        self.released += 1


class StubPool(ConnectionPool):
    """A ConnectionPool (the compiled connection holds its pool typed) with nothing behind it."""

    def __init__(self):
        self.high_water = 65536

    def forget(self, conn):
        pass


def test_a_bug_mid_stream_breaks_the_stream_in_band():
    """A callback of the upstream connection raises after the response began: the client gets
    vLLM's in-band error event, no terminating chunk, and a close; the upstream is aborted."""

    async def main():
        ctx, down, transport = connect(BrokenRouter, asyncio.get_running_loop())
        exchange = BuggyExchange(down, b"POST", b"/v1/x", [], b"{}", False, True, b"rid")
        exchange.selection = selection = StubSelection()
        down.active = exchange
        upstream = UpstreamConnection(StubPool())
        upstream_transport = MockTransport()
        upstream.connection_made(upstream_transport)
        upstream.exchange = exchange
        exchange.conn = upstream
        exchange.framer = ResponseFramer()
        upstream.data_received(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            b"d\r\ndata: first\n\n\r\n"
        )
        assert transport.closed and upstream_transport.closed and exchange.finished
        assert selection.released == 1 and down.active is None
        head, _, body = transport.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        first, rest = body[: len(b"d\r\ndata: first\n\n\r\n")], body[len(b"d\r\ndata: first\n\n\r\n"):]
        assert first == b"d\r\ndata: first\n\n\r\n"
        size, _, event = rest.partition(b"\r\n")
        assert int(size, 16) == len(event) - 2 and event.startswith(b"data: {\"error\"")
        assert b'"code":500' in event and not rest.endswith(b"0\r\n\r\n")

    asyncio.run(main())


def test_a_new_exchange_is_one_made_by_its_constructor():
    # Downstream makes each request's Exchange by allocation where compiled (new_exchange): it
    # must be the same object __init__ would make, every field of the relay's and the exchange's.
    from proxy.http.exchange import new_exchange
    from proxy.http.pipeline import Pipeline
    from proxy.http.relay import Relay

    down = Pipeline()
    for keep_alive in (True, False):
        args = (down, b"POST", b"/v1/chat/completions", [(b"host", b"h")], b"{}", False, keep_alive, b"rid")
        made, new = Exchange(*args), new_exchange(*args)
        assert type(new) is Exchange
        for name in Relay.__slots__ + Exchange.__slots__:
            assert getattr(new, name) == getattr(made, name), name
            assert type(getattr(new, name)) is type(getattr(made, name)), name


class ClosedTransport(MockTransport):
    """uvloop's transport after a reset was read: closed, its connection_lost still to come."""

    def write(self, data):
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")


def test_a_pooled_connection_closed_in_the_same_turn_is_lost_not_a_crash(caplog):
    """The backend reset an idle pooled connection and a request took it before its
    connection_lost ran (both in one turn of the loop): the write raises, the request waits
    for that connection_lost and is retried (here: nowhere to go, a 502), never a 500."""

    async def main():
        loop = asyncio.get_running_loop()
        ctx, down, transport = connect(Router, loop)
        pool = ctx.router.endpoints[0].pool
        upstream = UpstreamConnection(pool)
        upstream.connection_made(ClosedTransport())
        pool.conns.add(upstream)
        pool.release(upstream)
        with caplog.at_level(logging.ERROR, "fleetproxy"):
            down.data_received(REQUEST)
            assert transport.data == b"" and upstream.closed  # no answer yet, and the pool's is gone
            upstream.connection_lost(ConnectionResetError())
            for _ in range(200):
                if transport.data:
                    break
                await asyncio.sleep(0.01)
        head = transport.data.partition(b"\r\n")[0]
        assert head.startswith(b"HTTP/1.1 50") and not head.startswith(b"HTTP/1.1 500"), transport.data

    asyncio.run(main())
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


def test_an_upstream_eof_takes_the_connection_out_of_the_pool_at_once():
    pool = StubPool()
    upstream = UpstreamConnection(pool)
    upstream.connection_made(MockTransport())
    assert upstream.eof_received() is False and upstream.closed


def test_the_watchdog_checks_exactly_the_relays_still_watched():
    """Relays join the watchdog's list in any order and leave from anywhere in it (the last
    one takes the place left): each tick checks every relay still watched, once, and none
    that left; one that leaves during a tick is not checked after it left."""
    from proxy.http.relay import Relay
    from proxy.http.watchdog import Watchdog

    class Timers:
        def call_later(self, delay, callback):
            return object()  # a timer handle: only its presence counts here

    checked = []

    class Watched(Relay):
        def _watch(self):
            checked.append(self)
            if self is relays[3]:
                dog.discard(relays[4])  # a check may end other exchanges

    dog = Watchdog(Timers(), 1.0)
    relays = [Watched() for _ in range(8)]
    for relay in relays:
        dog.add(relay)
    dog.add(relays[0])  # a second add: still once
    for i in (0, 5, 7):
        dog.discard(relays[i])
    dog.discard(relays[5])  # a second discard: nothing
    assert sorted(r.watch_at for r in dog.relays()) == list(range(5)) and dog.watched[5:] == [None] * 3
    assert all(dog.watched[r.watch_at] is r for r in dog.relays())
    dog._run()
    # The list is r6 r1 r2 r3 r4 by then; r3's check ends r4, which the tick then skips.
    assert checked == [relays[6], relays[1], relays[2], relays[3]]
    assert relays[4].watch_at == -1 and relays[4] not in dog.relays()
    assert set(dog.relays()) == {relays[i] for i in (1, 2, 3, 6)}
    for relay in dog.relays():
        dog.discard(relay)
    assert dog.count == 0 and dog.watched == [None] * 8 and all(r.watch_at == -1 for r in relays)
    dog.add(relays[2])  # slots are reused, not appended
    assert dog.watched[0] is relays[2] and len(dog.watched) == 8 and relays[2].watch_at == 0
