"""http/direct.py: a connection's writes by send(2) where that is safe, the rest by the
transport, in order. Real uvloop TCP sockets on loopback. Compiled, a plain TCP transport gets a
descriptor and its writes go to the socket; interpreted (or any other transport) every write is
the transport's: the same bytes arrive either way, which is what these tests hold."""

import asyncio
import socket

import uvloop

import _speedups
from proxy.http import direct


class Sink(asyncio.Protocol):
    """The reading end: collects what arrives, or reads nothing until told (``hold``)."""

    def __init__(self, hold=False):
        self.data = bytearray()
        self.hold = hold
        self.transport = None
        self.lost = asyncio.get_event_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        if self.hold:
            transport.pause_reading()

    def data_received(self, data):
        self.data += data

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class Writer(asyncio.Protocol):
    def __init__(self):
        self.transport = None
        self.paused = 0
        self.lost = asyncio.get_event_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        self.paused += 1

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def _pair(hold=False):
    loop = asyncio.get_running_loop()
    sink = Sink(hold)
    server = await loop.create_server(lambda: sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await loop.create_connection(Writer, "127.0.0.1", port)
    while sink.transport is None:
        await asyncio.sleep(0.001)
    return server, sink, writer


async def _received(sink, size, within=10.0):
    """Wait until ``sink`` holds ``size`` bytes; a write that lost bytes fails, never hangs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(sink.data) < size:
        assert loop.time() < deadline, f"{len(sink.data)} of {size} bytes arrived"
        await asyncio.sleep(0.005)


def _run(coro):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def test_writes_arrive_whole_and_in_order_whether_sent_or_buffered():
    """Small writes go by send(2); a write larger than the socket takes leaves its rest in the
    transport, and the writes after it queue behind it there until it empties; then send(2)
    again. The reader gets every byte in order; flow control still pauses the writer."""

    async def main():
        server, sink, writer = await _pair(hold=True)
        sender = direct.Sender(writer.transport)
        compiled = _speedups.IMPLEMENTATION == "native"
        assert (sender.fd >= 0) == compiled
        writer.transport.set_write_buffer_limits(64 * 1024)
        expected = bytearray()
        for i in range(50):  # small: the socket takes each whole
            chunk = b"small-%03d;" % i
            sender.write(chunk, False)
            expected += chunk
        assert not sender.queued  # the socket took each (interpreted: the transport, not tracked)
        big = bytes(range(256)) * 40000  # ~10 MB: more than loopback's buffers hold unread
        sender.write(big, False)
        expected += big
        assert writer.transport.get_write_buffer_size() > 0 and sender.queued is compiled
        for i in range(20):  # behind the big one, in the transport
            chunk = b"after-%03d;" % i
            sender.write(chunk, False)
            expected += chunk
        assert writer.paused >= 1  # the transport's flow control saw the bytes it holds
        sink.transport.resume_reading()
        while len(sink.data) < len(expected):
            await asyncio.sleep(0.005)
        sender.write(b"last", False)  # the transport is empty again: straight to the socket
        expected += b"last"
        assert not sender.queued
        while len(sink.data) < len(expected):
            await asyncio.sleep(0.005)
        assert bytes(sink.data) == bytes(expected)
        writer.transport.close()
        server.close()

    _run(main())


def test_a_head_and_body_pair_arrives_whole_and_in_order():
    """write2 sends a head and a body by one sendmsg(2) where write would send; what the socket
    does not take (part of the head, part of the body) goes to the transport, and the writes
    after it queue behind it there, as write's rest does."""

    async def main():
        server, sink, writer = await _pair(hold=True)
        sender = direct.Sender(writer.transport)
        compiled = _speedups.IMPLEMENTATION == "native"
        writer.transport.set_write_buffer_limits(64 * 1024)
        expected = bytearray()
        for i in range(20):  # small pairs: the socket takes each whole
            head, body = b"head-%03d:" % i, b"body-%03d;" % i * 100
            sender.write2(head, body, False)
            expected += head + body
        assert not sender.queued
        big = bytes(range(256)) * 40000  # more than loopback takes unread: the rest buffered
        sender.write2(b"big-head:", big, False)
        expected += b"big-head:" + big
        assert writer.transport.get_write_buffer_size() > 0 and sender.queued is compiled
        sender.write2(b"queued-head:", b"queued-body;", False)  # all of it behind, in the transport
        sender.write(b"then-a-write;", False)
        expected += b"queued-head:queued-body;then-a-write;"
        sink.transport.resume_reading()
        await _received(sink, len(expected))
        sender.write2(b"last-head:", b"last-body", False)  # the transport is empty: one sendmsg
        expected += b"last-head:last-body"
        assert not sender.queued
        await _received(sink, len(expected))
        assert bytes(sink.data) == bytes(expected)
        writer.transport.close()
        server.close()

    _run(main())


def test_a_head_cut_by_the_socket_keeps_the_rest_of_both():
    """A socket that takes only part of the head (its buffers are far smaller than the head,
    the reader reads nothing yet): the rest of the head, then the whole body, from the
    transport."""

    async def main():
        server, sink, writer = await _pair(hold=True)
        writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sender = direct.Sender(writer.transport)
        head, body = bytes(range(256)) * 4096, b"B" * 100000  # a 1 MiB head
        sender.write2(head, body, False)
        assert 0 < writer.transport.get_write_buffer_size() <= len(head) + len(body)
        assert sender.queued is (_speedups.IMPLEMENTATION == "native")
        if sender.queued:  # sendmsg took part of the head: the transport holds all of the body
            assert writer.transport.get_write_buffer_size() > len(body)
        sink.transport.resume_reading()
        await _received(sink, len(head) + len(body))
        assert bytes(sink.data) == head + body
        writer.transport.close()
        server.close()

    _run(main())


def test_a_closed_connection_is_never_written_to_directly():
    """Once its protocol says closed, or its transport is closing, a write goes to the transport
    (which drops it as it always has), never to a descriptor that may be another connection's."""

    async def main():
        server, sink, writer = await _pair()
        sender = direct.Sender(writer.transport)
        sender.write(b"before", False)
        writer.transport.close()
        sender.write(b"after-close", False)  # closing: the transport's, which drops it
        sender.write(b"after-lost", True)
        await writer.lost
        await asyncio.wait_for(sink.lost, 5)
        assert bytes(sink.data) == b"before"
        server.close()

    _run(main())


def test_a_peer_gone_is_the_transports_error_as_before():
    """send(2) meeting a reset peer hands the bytes to the transport, which meets the same error
    and ends the connection (connection_lost), as every write did before direct sends."""

    async def main():
        server, sink, writer = await _pair()
        sender = direct.Sender(writer.transport)
        sock = sink.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sink.transport.abort()  # an RST to the writer
        await asyncio.sleep(0.05)
        for _ in range(3):
            if writer.lost.done():
                break
            sender.write(b"x" * 1000, writer.lost.done())
            await asyncio.sleep(0.02)
        assert isinstance(await asyncio.wait_for(writer.lost, 5), (ConnectionError, OSError, type(None)))
        server.close()

    _run(main())


def test_other_transports_get_no_descriptor():
    class Fake:
        def write(self, data):
            self.data = data

    fake = Fake()
    sender = direct.Sender(fake)
    assert sender.fd == -1
    sender.write(b"abc", False)
    assert fake.data == b"abc"
    fake.writelines = lambda parts: setattr(fake, "data", b"".join(parts))
    sender.write2(b"head", b"body", False)
    assert fake.data == b"headbody"
