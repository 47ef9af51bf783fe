"""A transport of the proxy's own for a plain TCP connection to a backend: reads by
``loop.add_reader`` and recv(2), writes by send(2); in the native build both from C.

Why. uvloop's stream transport takes the GIL twice for every read: libuv calls its buffer
callback, then its read callback, and each runs ``with gil``. In CPython 3.11 a cycle of the
GIL is about 470 instructions. A poll callback takes it once, and recv(2) from C keeps it: about
500 instructions less per read, that is per token event of a stream (bench/micro/readfloor.py,
bench/results/2026-12-06-stop35.md). TLS connections stay on uvloop's transports
(connection_pool.py).

What it keeps of asyncio's transport contract, for its one user (upstream.UpstreamConnection):

- ``connection_made(transport)`` at once; ``data_received(bytes)`` per read; at EOF
  ``eof_received()``, then a close unless it returns true; ``connection_lost(exc)`` exactly once,
  on a later turn of the loop, after ``close`` (once the buffered bytes are sent), ``abort`` or
  an error (exc: the OSError);
- ``write(data)`` and ``writelines(parts)``: sent at once where the socket takes it, the rest
  kept and sent as the socket becomes writable, with ``pause_writing()`` above the high-water mark and ``resume_writing()``
  at or below the low one;
- ``pause_reading``, ``resume_reading``, ``is_closing``, ``get_write_buffer_size``,
  ``set_write_buffer_limits``, ``get_extra_info`` (socket, peername, sockname).

The socket is closed as soon as nothing more will be sent on it, before ``connection_lost``
runs: a backend sees an aborted request's connection go at once.
"""

import socket

_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (tcp.pxd)
READ_SIZE = 256 * 1024  # the most one read takes (uvloop's own buffer is this size)


async def open_connection(loop, protocol, host, port):
    """A connected ``SocketTransport`` to ``host:port`` for ``protocol``: each address the
    name resolves to, in order, until one accepts (the error of the last one that did not)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    error = OSError(f"{host}:{port} resolved to no address")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:  # cancelled (the connect timeout): no socket left behind
            sock.close()
            raise
        return SocketTransport(loop, sock, protocol)
    raise error


class SocketTransport:
    """One connected, non-blocking TCP socket and its protocol (see the module)."""

    __slots__ = ("loop", "sock", "fd", "protocol", "received", "reading", "closing", "lost", "pending", "high",
                 "low", "paused")

    def __init__(self, loop, sock, protocol):
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.protocol = protocol
        self.received = protocol.data_received  # bound once: a read calls it, no look-up by name
        self.reading = True
        self.closing = False  # close or abort was asked, or the connection failed
        self.lost = False  # connection_lost is scheduled; the socket is closed
        self.pending = bytearray()  # written, not yet taken by the socket
        self.high = 64 * 1024
        self.low = 16 * 1024
        self.paused = False  # the protocol was told to pause writing
        loop.add_reader(self.fd, self._read_ready)
        protocol.connection_made(self)

    # -- reading -------------------------------------------------------------------------

    def _read_ready(self):
        try:
            if _COMPILED:
                data = fleetproxy_recv(self.fd)  # noqa: F821 (tcp.pxd); None: it would block
            else:
                data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        if data is None:
            return
        if data:
            self.received(data)
            return
        self._stop_reading()
        if not self.protocol.eof_received():
            self.close()

    def pause_reading(self):
        if self.reading and not self.closing:
            self._stop_reading()

    def resume_reading(self):
        if not self.reading and not self.closing:
            self.reading = True
            self.loop.add_reader(self.fd, self._read_ready)

    def _stop_reading(self):
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)

    # -- writing -------------------------------------------------------------------------

    def write(self, data):
        if self.closing:
            return  # as asyncio's transports: bytes written after a close go nowhere
        if not self.pending:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(exc)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            self.loop.add_writer(self.fd, self._write_ready)
        self.pending += data
        if not self.paused and len(self.pending) > self.high:
            self.paused = True
            self.protocol.pause_writing()

    def writelines(self, parts):
        for part in parts:
            self.write(part)

    def _write_ready(self):
        try:
            sent = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        del self.pending[:sent]
        if self.pending:
            if self.paused and len(self.pending) <= self.low:
                self.paused = False
                self.protocol.resume_writing()
            return
        self.loop.remove_writer(self.fd)
        if self.closing:
            self._lose(None)
        elif self.paused:
            self.paused = False
            self.protocol.resume_writing()

    def get_write_buffer_size(self):
        return len(self.pending)

    def set_write_buffer_limits(self, high=None, low=None):
        high = 64 * 1024 if high is None else high
        self.high = high
        self.low = high // 4 if low is None else low

    # -- closing -------------------------------------------------------------------------

    def is_closing(self):
        return self.closing

    def close(self):
        """Stop reading; close once the buffered bytes are sent."""
        if self.closing:
            return
        self.closing = True
        self._stop_reading()
        if not self.pending:
            self._lose(None)

    def abort(self):
        """Close now; buffered bytes are dropped."""
        self._fail(None)

    def _fail(self, exc):
        self.closing = True
        self._stop_reading()
        if self.pending and not self.lost:
            self.pending = bytearray()
            self.loop.remove_writer(self.fd)
        self._lose(exc)

    def _lose(self, exc):
        """Close the socket now, and tell the protocol on the next turn of the loop (once)."""
        if self.lost:
            return
        self.lost = True
        self.sock.close()
        self.loop.call_soon(self._call_lost, exc)

    def _call_lost(self, exc):
        protocol, self.protocol, self.received = self.protocol, None, None  # no cycle left behind
        protocol.connection_lost(exc)

    def get_extra_info(self, name, default=None):
        if name == "socket":
            return self.sock
        if name in ("peername", "sockname") and not self.lost:
            try:
                return self.sock.getpeername() if name == "peername" else self.sock.getsockname()
            except OSError:
                return default
        return default
