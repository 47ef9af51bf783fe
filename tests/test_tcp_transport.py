"""http/tcp.py: the proxy's own transport for plain TCP connections upstream, against uvloop's
TCP transport on the other end of a real loopback connection. Both builds run these: compiled,
a read is recv(2) from C; interpreted, the socket's own recv. What a protocol sees must be
asyncio's contract either way: every byte in order, flow control on both sides, EOF, a reset,
and exactly one connection_lost, on a later turn of the loop."""

import asyncio
import socket

import pytest
import uvloop

from proxy.http import direct, tcp


class Peer(asyncio.Protocol):
    """The backend's end (uvloop's transport): collects what arrives, or reads nothing until
    told (``hold``)."""

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


class Recorder:
    """The proxy's end: every callback, in order (``events``), and the bytes received."""

    def __init__(self, keep_open=False):
        self.events = []
        self.data = bytearray()
        self.keep_open = keep_open
        self.transport = None
        self.lost = asyncio.get_event_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert type(data) is bytes
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        return self.keep_open

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append("lost")
        assert not self.lost.done(), "connection_lost twice"
        self.lost.set_result(exc)


async def _pair(hold=False, keep_open=False):
    loop = asyncio.get_running_loop()
    peer = Peer(hold)
    server = await loop.create_server(lambda: peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mine = Recorder(keep_open)
    transport = await tcp.open_connection(loop, mine, "127.0.0.1", port)
    while peer.transport is None:
        await asyncio.sleep(0.001)
    return server, peer, mine, transport


def _run(coro):
    """``coro`` on uvloop; an error any callback raised into the loop fails the test too."""
    errors = []

    async def checked():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        result = await coro
        await asyncio.sleep(0.02)  # the callbacks scheduled last run, and may fail
        return result

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(checked())
    assert not errors, errors
    return result


async def _until(check, seconds=5.0):
    for _ in range(int(seconds / 0.005)):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


def test_reads_arrive_whole_and_in_order_and_reading_pauses():
    """Every byte the backend sends, in order, across many reads; paused, the transport reads
    nothing more until resumed."""

    async def main():
        server, peer, mine, transport = await _pair()
        assert mine.transport is transport and mine.events == ["made"]
        assert transport.get_extra_info("socket").fileno() == transport.fd
        assert transport.get_extra_info("peername") == peer.transport.get_extra_info("sockname")
        sent = bytearray()
        for i in range(200):
            chunk = b"event %04d\n\n" % i
            peer.transport.write(chunk)
            sent += chunk
        big = bytes(range(256)) * 4000  # 1 MB: more than one read takes
        peer.transport.write(big)
        sent += big
        await _until(lambda: len(mine.data) == len(sent))
        assert bytes(mine.data) == bytes(sent)
        transport.pause_reading()
        peer.transport.write(b"held")
        await asyncio.sleep(0.05)
        assert len(mine.data) == len(sent)  # not read while paused
        transport.resume_reading()
        await _until(lambda: mine.data.endswith(b"held"))
        transport.close()
        assert transport.is_closing()
        assert await asyncio.wait_for(mine.lost, 5) is None
        assert await asyncio.wait_for(peer.lost, 5) is None  # the backend saw the close
        assert mine.events == ["made", "lost"]
        server.close()

    _run(main())


def test_writes_the_socket_does_not_take_are_kept_and_flow_controlled():
    """A write larger than the socket takes is kept and sent as it drains, behind it the later
    writes, in order; the protocol is paused above the high-water mark and resumed at the low
    one; the direct sender sends by send(2) again once the transport is empty."""

    async def main():
        server, peer, mine, transport = await _pair(hold=True)
        transport.set_write_buffer_limits(64 * 1024)
        sender = direct.Sender(transport)
        sent = bytearray()
        sender.write(b"head;", False)
        sent += b"head;"
        big = bytes(range(256)) * 40000  # ~10 MB: more than loopback holds unread
        sender.write(big, False)
        sent += big
        assert transport.get_write_buffer_size() > 64 * 1024
        assert mine.events == ["made", "pause"]
        transport.writelines([b"after-1;", b"after-2;"])
        sent += b"after-1;after-2;"
        peer.transport.resume_reading()
        await _until(lambda: len(peer.data) == len(sent))
        assert bytes(peer.data) == bytes(sent)
        assert transport.get_write_buffer_size() == 0 and mine.events == ["made", "pause", "resume"]
        sender.write(b"last", False)
        await _until(lambda: peer.data.endswith(b"last"))
        transport.close()
        await asyncio.wait_for(mine.lost, 5)
        server.close()

    _run(main())


def test_close_sends_what_is_kept_first_and_abort_drops_it():
    async def main():
        server, peer, mine, transport = await _pair(hold=True)
        big = b"k" * (4 << 20)
        transport.write(big)
        assert transport.get_write_buffer_size() > 0
        transport.close()
        transport.write(b"after close")  # dropped, as asyncio's transports drop it
        assert not mine.lost.done()
        peer.transport.resume_reading()
        assert await asyncio.wait_for(mine.lost, 5) is None
        await asyncio.wait_for(peer.lost, 5)
        assert bytes(peer.data) == big  # all of it, then the close; nothing written after it

        server2, peer2, mine2, transport2 = await _pair(hold=True)
        transport2.write(b"d" * (4 << 20))
        transport2.abort()
        transport2.abort()  # twice: still one connection_lost
        assert transport2.is_closing() and transport2.get_write_buffer_size() == 0
        assert await asyncio.wait_for(mine2.lost, 5) is None
        peer2.transport.resume_reading()
        await asyncio.wait_for(peer2.lost, 5)  # the backend sees the connection go
        assert len(peer2.data) < 4 << 20
        assert mine2.events == ["made", "pause", "lost"]
        server.close()
        server2.close()

    _run(main())


@pytest.mark.parametrize("keep_open", [False, True])
def test_eof_is_told_then_the_connection_closes_unless_kept(keep_open):
    async def main():
        server, peer, mine, transport = await _pair(keep_open=keep_open)
        peer.transport.write(b"last words")
        peer.transport.write_eof()
        await _until(lambda: "eof" in mine.events)
        assert bytes(mine.data) == b"last words"
        if keep_open:  # half-closed: the proxy's side may still write
            await asyncio.sleep(0.02)
            assert not mine.lost.done() and not transport.is_closing()
            transport.write(b"reply")
            await _until(lambda: peer.data == b"reply")
            transport.close()
        assert await asyncio.wait_for(mine.lost, 5) is None
        assert mine.events == ["made", "eof", "lost"]
        server.close()

    _run(main())


def test_a_reset_is_connection_lost_with_its_error():
    async def main():
        server, peer, mine, transport = await _pair()
        sock = peer.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.transport.abort()  # an RST
        exc = await asyncio.wait_for(mine.lost, 5)
        assert isinstance(exc, ConnectionResetError), exc
        assert transport.is_closing() and transport.get_extra_info("peername") is None
        transport.write(b"too late")  # dropped, never an error
        transport.close()
        await asyncio.sleep(0.01)
        assert mine.events == ["made", "lost"]
        server.close()

    _run(main())


def test_connect_refused_and_names_resolved():
    """A port nobody listens on is the connect's own OSError, and no descriptor is left behind;
    a name resolves as asyncio's create_connection resolves it."""

    async def main():
        loop = asyncio.get_running_loop()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # a port that was free: nothing listens there
        with pytest.raises(ConnectionRefusedError):
            await tcp.open_connection(loop, Recorder(), "127.0.0.1", port)
        peer = Peer()
        server = await loop.create_server(lambda: peer, "127.0.0.1", 0)
        mine = Recorder()
        transport = await tcp.open_connection(loop, mine, "localhost", server.sockets[0].getsockname()[1])
        transport.write(b"by name")
        await _until(lambda: peer.data == b"by name")
        transport.close()
        await asyncio.wait_for(mine.lost, 5)
        server.close()

    _run(main())
