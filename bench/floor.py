"""The floor of a Python proxy on uvloop: what `asyncio.Protocol` callbacks cost with no proxy in them.

    python -m bench.floor --listen 127.0.0.1:PORT --backend http://127.0.0.1:PORT

A measuring instrument, not a proxy (`python -m bench --targets ...,uvloop-floor`). Each client
connection gets one upstream connection of its own, opened when the client connects, and every
read on either side is written to the other as it came: no parsing, no pool, no routing, no
timers, no per-request object. For a closed-loop keep-alive client (wrk) that is a correct
proxy of the backend, and the least work any proxy built on uvloop's Protocol callbacks can do
per request: two reads and two writes, each a Python callback with a bytes object. Whatever
fleetproxy spends above this row is its own; what this row spends above nginx is the price of
the event loop and the interpreter, which no work inside the callbacks can take back.
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import urlsplit

import uvloop


class Upstream(asyncio.Protocol):
    __slots__ = ("client",)

    def __init__(self, client: asyncio.Transport):
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    def __init__(self, backend: tuple[str, int]):
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []  # bytes that came before the upstream connection did

    def connection_made(self, transport) -> None:
        self.transport = transport
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(lambda: Upstream(self.transport), *self.backend)
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():
            upstream.close()
            return
        self.upstream = upstream
        if self.early:
            upstream.writelines(self.early)
            self.early = []

    def data_received(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is not None:
            upstream.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def serve(listen: tuple[str, int], backend: tuple[str, int], client=Client) -> None:
    """Forward each connection to ``listen`` to ``backend``: ``client(backend)`` is its protocol
    (bench/micro/readfloor.py passes its compiled floor's)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: client(backend), *listen, backlog=4096)
    print(f"uvloop-floor: listening on {listen[0]}:{listen[1]} -> {backend[0]}:{backend[1]}", flush=True)
    await server.serve_forever()


def run(listen: str, backend: str, client=Client) -> None:
    """``serve`` on uvloop, from ``HOST:PORT`` and a backend URL, until interrupted."""
    host, _, port = listen.rpartition(":")
    url = urlsplit(backend)
    try:
        uvloop.run(serve((host, int(port)), (url.hostname, url.port), client))
    except KeyboardInterrupt:
        pass


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, metavar="HOST:PORT")
    p.add_argument("--backend", required=True, metavar="URL")
    args = p.parse_args(argv)
    run(args.listen, args.backend)


if __name__ == "__main__":
    main()
