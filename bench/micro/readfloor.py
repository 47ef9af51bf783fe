"""How much of a token event is uvloop's stream read path: the floor, compiled, two ways.

    python bench/micro/served.py --target floor --floor-read protocol --lua stream16.lua --itl 0.002
    python bench/micro/served.py --target floor --floor-read reader --lua stream16.lua --itl 0.002

Why. Counted by callgrind (``served.py``), uvloop takes the GIL twice for every read of a
stream: libuv calls its buffer-allocation callback and then its read callback, and each runs
``with gil``. In CPython 3.11 a cycle of the GIL is about 470 user-space instructions. This
floor forwards as bench/floor.py does, one upstream connection per client connection, with its
upstream side compiled (``readfloor_c.pyx``, so the interpreter is out of the comparison) and
read one of two ways:

- ``protocol``: a Protocol on uvloop's TCP transport, as fleetproxy reads today;
- ``reader``: ``loop.add_reader`` on the socket and recv(2) from C. libuv calls one poll
  callback, and the read does not let the GIL go.

The client side is the same Python Protocol in both, and writes to the upstream by send(2).
The difference between the two counts is what a data path that owns its sockets would save
per read. It is an experiment: it keeps no write buffer and no flow control.

``served.py --floor-read`` builds the extension first (Cython, into this folder; ``--build``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys

from bench import floor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build():
    """Compile readfloor_c.pyx in place (bench/micro/readfloor_c*.so)."""
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    os.chdir(ROOT)
    ext = cythonize([Extension("bench.micro.readfloor_c", ["bench/micro/readfloor_c.pyx"])], quiet=True)
    cmd = Distribution({"ext_modules": ext}).get_command_obj("build_ext")
    cmd.inplace = True
    cmd.ensure_finalized()
    cmd.run()


class Client(asyncio.Protocol):
    def __init__(self, backend, read, compiled):
        self.backend = backend
        self.read = read
        self.compiled = compiled  # readfloor_c, as built
        self.send = compiled.send_all
        self.transport = None
        self.fd = -1
        self.sock = None  # reader: the upstream socket, owned here
        self.upstream = None  # protocol: the upstream transport
        self.early = []  # protocol: what came before its transport did

    def connection_made(self, transport):
        self.transport = transport
        loop = asyncio.get_running_loop()
        # A blocking connect on loopback, before the client's first request can arrive.
        sock = socket.create_connection(self.backend)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.read == "reader":
            sock.setblocking(False)
            self.sock = sock
            self.fd = sock.fileno()
            loop.add_reader(self.fd, self.compiled.Reader(self.fd, transport, self._lost))
        else:
            loop.create_task(self._wrap(loop, sock, self.compiled.Upstream(transport)))

    async def _wrap(self, loop, sock, protocol):
        self.upstream, _ = await loop.create_connection(lambda: protocol, sock=sock)
        self.fd = self.upstream.get_extra_info("socket").fileno()
        for data in self.early:
            self.send(self.fd, data)
        self.early = []

    def data_received(self, data):
        if self.fd < 0:
            self.early.append(data)
        else:
            self.send(self.fd, data)

    def _lost(self):
        self.transport.close()

    def connection_lost(self, exc):
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.fd)
            self.sock.close()
        elif self.upstream is not None:
            self.upstream.close()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.micro.readfloor", description=__doc__.split("\n\n")[0])
    p.add_argument("--build", action="store_true", help="compile readfloor_c.pyx and exit")
    p.add_argument("--read", choices=["protocol", "reader"], default="protocol")
    p.add_argument("--listen", metavar="HOST:PORT")
    p.add_argument("--backend", metavar="URL")
    args = p.parse_args(argv)
    if args.build:
        build()
        return
    if not args.listen or not args.backend:
        sys.exit("--listen and --backend are needed to serve")
    from bench.micro import readfloor_c  # built by --build

    floor.run(args.listen, args.backend, lambda backend: Client(backend, args.read, readfloor_c))


if __name__ == "__main__":
    main()
