"""The upstream side of one keep-alive connection to an endpoint.

A connection is either idle in its pool or bound to exactly one Exchange (``exchange``), which
it hands every byte it receives. It never reads ahead: an idle connection that receives data or
EOF is broken and leaves the pool.

Over TLS (https endpoints, external providers) the transport is uvloop's SSL transport; this
protocol sees plaintext either way. ``client_context`` builds the one SSLContext an endpoint's
connections share: certificate and host-name verification on unless the config says
``verify: false``, the system's CAs unless ``ca_file`` names others, ALPN http/1.1.
"""

import ssl

from ..observe.metrics import hold, release
from .direct import Sender


class UpstreamConnection:
    """An asyncio protocol by its methods (no asyncio.Protocol base: the native build makes it
    an extension type, upstream.pxd, which cannot derive from a Python class)."""

    __slots__ = ("pool", "transport", "sender", "exchange", "closed", "idle_since", "requests", "rx")

    def __init__(self, pool):
        self.pool = pool
        self.transport = None
        self.sender = None  # direct.Sender: how ``write`` reaches the socket
        self.exchange = None
        self.closed = False
        self.idle_since = 0.0
        self.requests = 0  # how many requests this connection carried (reuse count)
        self.rx = 0  # reads, a cheap progress counter for the idle watchdog

    def connection_made(self, transport):
        self.transport = transport
        self.sender = Sender(transport)
        high = self.pool.high_water
        transport.set_write_buffer_limits(high, high // 4)

    def write(self, data):
        """Every byte of a request upstream: sent on the socket directly where http/direct.py
        says it is safe, else by the transport."""
        self.sender.write(data, self.closed)

    def data_received(self, data):
        self.rx += 1
        exchange = self.exchange
        if exchange is None:
            # Bytes on an idle connection: the backend is confused; never reuse it.
            self.close()
            return
        hold()  # one clock read for this read (observe/metrics.py)
        try:
            exchange.upstream_data(data)
        except Exception as exc:  # a bug of ours must end the request, not hang it
            exchange.down.crashed(exc)
        finally:
            release()

    def eof_received(self):
        # Closed from here on: until connection_lost runs (next turn of the loop) the pool must
        # not hand this connection to a request. Close our side too; connection_lost decides
        # whether EOF ended the message.
        self.closed = True
        return False

    def connection_lost(self, exc):
        self.closed = True
        exchange = self.exchange
        self.exchange = None
        self.pool.forget(self)
        if exchange is not None:
            try:
                exchange.upstream_lost(exc)
            except Exception as err:
                exchange.down.crashed(err)

    # The client's reading pauses while we cannot push its request body upstream.
    def pause_writing(self):
        if self.exchange is not None:
            self.exchange.down.pause_reading()

    def resume_writing(self):
        if self.exchange is not None:
            self.exchange.down.resume_reading()

    def close(self):
        """Drop the connection now (abort: a backend notices and cancels the generation)."""
        if not self.closed:
            self.closed = True
            self.exchange = None
            if self.transport is not None:
                self.transport.abort()


def client_context(ca_file=None, verify=True):
    """The SSLContext for connections to one https endpoint."""
    ctx = ssl.create_default_context(cafile=ca_file)  # TLS >= 1.2, CERT_REQUIRED, check_hostname
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
