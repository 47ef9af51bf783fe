"""Start and stop one simulator on the running event loop."""

from __future__ import annotations

import asyncio

from .api import Api
from .config import SimConfig
from .engine import Stats
from .server import Connection


class Sim:
    """A listening simulator. `port` is the bound port (useful with port 0)."""

    def __init__(self, config: SimConfig, api: Api) -> None:
        self.config = config
        self.api = api
        self.server: asyncio.AbstractServer | None = None
        self.conns: set[Connection] = set()
        self.port = 0
        self.name = ""

    @property
    def stats(self) -> Stats:
        return self.api.stats

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def close(self) -> None:
        """Stop listening and drop every connection; running requests are cancelled."""
        if self.server is None:
            return
        self.server.close()
        for conn in list(self.conns):
            conn.transport.abort()
        await self.server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost run and cancel request tasks
        self.server = None


async def start_sim(config: SimConfig) -> Sim:
    loop = asyncio.get_running_loop()
    sim = Sim(config, Api(config))
    line = [b""]  # filled once the port is known; every connection reads it

    def factory() -> Connection:
        return Connection(sim.api, sim.conns, line[0])

    sim.server = await loop.create_server(
        factory, config.host, config.port, reuse_address=True, backlog=4096
    )
    sim.port = sim.server.sockets[0].getsockname()[1]
    sim.name = config.name or f"{config.host}:{sim.port}"
    line[0] = b"x-sim-backend: " + sim.name.encode() + b"\r\n"
    return sim
