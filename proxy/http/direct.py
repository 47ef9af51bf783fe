"""A connection's bytes sent on its socket by send(2), past uvloop's write path, where safe.

Why. uvloop's ``TCPTransport.write`` appends to a list, tries the write, clears the list by a
method call and runs its write-completion hooks: ~1,000 user-space instructions a write
(callgrind, bench/micro/served.py), where the system call's own user side is ~50. A proxied
request makes two writes (its head upstream, the response to the client), and a stream one
more per token event: that was the largest single cost of the proxy's own per request.

When. ``socket_fd`` gives a descriptor only to the compiled build, for uvloop's plain TCP
transports (never TLS: those bytes are the SSL object's to write). ``Sender.write`` then
writes by send(2) only while all of these hold:
- the protocol has not seen ``connection_lost``: uvloop closes the descriptor after that
  callback returns, never before, so until then the descriptor is this connection's (the
  protocol's own ``closed`` flag, set there or earlier, is what the callers pass), and the
  transport is not closing (uvloop's own flag, set before any path of its that closes);
- nothing waits in the transport's buffer, so bytes leave in the order they were written
  (after a write went to the transport, the protocol asks the transport until it is empty);
- the data is a bytes object.
Whatever send(2) does not take (the socket's buffer is full, a partial send, an error) goes to
``transport.write`` as before, so the transport's buffering, flow control (pause_writing) and
error handling (a reset, a broken pipe: ``connection_lost``) are what they were.
"""

_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (direct.pxd)


def socket_fd(transport):
    """The descriptor a ``Sender`` may send on for ``transport``, or -1 (every write goes to the
    transport): the pure build, a TLS or test transport, a socket already gone."""
    if not _COMPILED or type(transport).__name__ != "TCPTransport" or type(transport).__module__ != "uvloop.loop":
        return -1
    sock = transport.get_extra_info("socket")
    if sock is None:
        return -1
    try:
        return sock.fileno()
    except OSError:
        return -1


class Sender:
    """How one connection writes: its transport, and the socket's descriptor where the
    compiled build may send on it directly (``socket_fd``). A protocol makes one at
    ``connection_made`` and hands it every write with its own ``closed`` flag."""

    __slots__ = ("transport", "fd", "queued", "closing")

    def __init__(self, transport):
        self.transport = transport
        self.fd = socket_fd(transport)
        self.queued = False  # a write went to the transport: the next go there until it is empty
        # The transport's is_closing, bound once: asked before every send (a stream's every
        # event), a call of the bound method with nothing to look up (a few instructions a
        # write fewer than calling the type's method on the transport).
        self.closing = transport.is_closing if self.fd >= 0 else None

    def _may_send(self, closed):
        """Whether a write may go to the socket now (this module's docstring says when): the
        compiled build, an open connection, nothing waiting in the transport. After a close the
        transport drops or raises, as it always has."""
        transport = self.transport
        if self.queued and not transport.get_write_buffer_size():
            self.queued = False
        return _COMPILED and not (self.queued or closed or self.closing())

    def write(self, data, closed):
        """``data`` to the connection, in order after every earlier write."""
        transport = self.transport
        if self.fd < 0:
            transport.write(data)
            return
        if type(data) is bytes and self._may_send(closed):
            chunk = data  # compiled: typed bytes, so its size is read, not asked for
            n = len(chunk)
            sent = fleetproxy_send(self.fd, chunk, n)  # noqa: F821 (direct.pxd)
            if sent == n:
                return
            if sent > 0:
                data = data[sent:]
        transport.write(data)  # what the socket did not take: buffered, flow-controlled, or its error
        self.queued = True

    def write2(self, head, body, closed):
        """``head`` then ``body`` (bytes both) to the connection, in order after every earlier
        write: one sendmsg(2) of the two where ``write`` would send, so a large request body
        leaves with its head without being copied next to it first. What the socket does not
        take goes to the transport, as ``write``'s does."""
        transport = self.transport
        if self.fd < 0:
            transport.writelines((head, body))
            return
        if self._may_send(closed):
            n = len(head)
            sent = fleetproxy_send2(self.fd, head, n, body, len(body))  # noqa: F821 (direct.pxd)
            if sent == n + len(body):
                return
            if sent >= n:
                transport.write(body[sent - n:])
                self.queued = True
                return
            if sent > 0:
                head = head[sent:]
        transport.writelines((head, body))
        self.queued = True
