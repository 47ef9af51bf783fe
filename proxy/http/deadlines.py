"""The client's deadlines, on one lazy timer per connection.

How this works (a part of ``downstream.Downstream``, kept apart for its size).
- One timer enforces every client deadline: head (a new connection that sent nothing yet
  included: ``header_read``, or keep-alive if shorter), body, keep-alive, and the write stall:
  while writing is paused, a client that takes no byte of what we wrote for ``write_stall`` is
  aborted with a reset (the upstream watchdog does not count a stall while the client is the
  slow one, so this is what bounds a client that stops reading). The reader's phase says which
  read deadline applies and since when; while the proxy itself stopped reading (pipeline full,
  upstream slow) no read deadline runs.
- The timer re-arms itself for whatever deadline is current when it fires, never sleeping past
  the shortest limit (``ctx.timer_cap``), so a request costs no timer churn.
- A closed connection whose transport still flushes is watched the same way (``_linger``):
  closing never waits forever on a client that reads nothing.
"""

import fcntl
import logging
import socket
import struct
import termios

from . import responses
from .errors import ClientError
from .pipeline import OURS
from .request import IDLE, READING_HEAD

log = logging.getLogger("fleetproxy.downstream")

_LINGER_OFF = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() drops unsent bytes and resets


class Deadlines:
    """The timer half of ``Downstream``: its state lives in Downstream's slots."""

    __slots__ = ()

    def _on_timer(self):
        # Invariant: the timer never fires later than the current deadline. Every arming is
        # capped at the shortest client deadline, so a deadline that starts while the timer is
        # armed for a long keep-alive wait is still caught on time. (connection_lost cancels it.)
        self.timer = None
        try:
            if self.closed:
                self._linger()
            else:
                self._check_deadline()
        except Exception as exc:
            self.crashed(exc)

    def _stalled(self, now):
        """Seconds left before the write stall limit, from the last time the client took any
        byte of what we wrote (seen at a check: the timer looks at least every quarter of the
        limit while writing is paused, so a stall is cut between 1 and 1.25 times it)."""
        size = unsent(self.transport)
        if size < self.stall_size:
            self.stall_since = now
        self.stall_size = size
        return self.stall_since + self.ctx.cfg.timeouts.write_stall - now

    def _linger(self):
        """A closed connection whose transport still flushes: abort it once the client has
        taken nothing for ``write_stall``."""
        if not self.transport.get_write_buffer_size():
            return  # flushed: connection_lost is on its way
        stall = self.ctx.cfg.timeouts.write_stall
        left = self._stalled(self.loop.time())
        if left <= 0:
            reset(self.transport)
            return
        self.timer = self.loop.call_later(min(left, stall / 4), self._on_timer)

    def _check_deadline(self):
        ctx = self.ctx
        timeouts = ctx.cfg.timeouts
        now = self.loop.time()
        arm = ctx.timer_cap
        if self.writing_paused:
            left = self._stalled(now)
            if left <= 0:
                log.info(
                    "connection from %s: the client read nothing for %.3g s (write_stall); aborting it",
                    self.peer.decode(errors="replace"), timeouts.write_stall,
                )
                self.abort()
                return
            arm = min(arm, left, timeouts.write_stall / 4)
        reader = self.reader
        phase = reader.phase
        if self.paused & OURS:
            reader.since = now  # we stopped reading: the client is not late
        if phase == READING_HEAD:
            limit = timeouts.header_read
        elif phase != IDLE:
            limit = timeouts.request_read
        elif self.active is not None or self.queue:
            limit = timeouts.keepalive
            reader.since = now  # relaying a response is not idleness
        elif not self.requests:
            # A new connection owes us a head: it gets the head's deadline, never more patience
            # than an idle keep-alive connection (whichever is shorter), not 75 s of keep-alive.
            limit = min(timeouts.header_read, timeouts.keepalive)
        else:
            limit = timeouts.keepalive
        remaining = reader.since + limit - now
        if remaining > 0:
            self.timer = self.loop.call_later(min(remaining, arm), self._on_timer)
            return
        if phase != IDLE and self.active is None and not self.queue:
            what = "request head" if phase == READING_HEAD else "request body"
            self.write(responses.error(ClientError(f"timed out reading the {what}", status=408)))
        self.close()


def unsent(transport):
    """Bytes written and not yet taken by the client: the transport's buffer plus, on Linux,
    the socket's unacknowledged send queue (TIOCOUTQ). The buffer alone moves only when the
    kernel finds the socket writable again, after a third of a send buffer of megabytes has
    drained; the queue moves with every byte the client reads."""
    size = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            size += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except (OSError, ValueError, AttributeError):
            pass
    return size



def reset(transport):
    """Abort with a reset, as nginx's ``reset_timedout_connection``: a plain close of a socket
    whose client reads nothing leaves its unsent bytes (up to the send buffer, megabytes) in
    the kernel, an orphan retrying toward a zero window for minutes; a reset frees them now."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
        except OSError:
            pass
    transport.abort()
