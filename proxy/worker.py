"""One serving process: installs uvloop, opens the listeners, serves, drains on a signal."""

import asyncio
import logging
import os
import signal

import uvloop

from _speedups import IMPLEMENTATION

from . import admin, health
from .downstream import Downstream
from .router import build_router

log = logging.getLogger("fleetproxy")


class Context:
    """What every connection of this worker shares: config, loop, router, derived constants."""

    def __init__(self, cfg, loop, router):
        self.cfg = cfg
        self.loop = loop
        self.router = router
        self.connections = set()
        self.draining = False
        t = cfg.timeouts
        # The upstream watchdog ticks at a quarter of the shorter upstream timeout, so a stall
        # is caught between 1 and 1.25 times its limit (see relay.Exchange._watch).
        self.tick = min(t.first_byte, t.idle) / 4
        self.first_byte_ticks = max(1, round(t.first_byte / self.tick))
        self.idle_ticks = max(1, round(t.idle / self.tick))
        # The client-connection timer never sleeps past the shortest client deadline.
        self.timer_cap = min(t.header_read, t.request_read, t.keepalive)
        self._rid_prefix = b"%x-%x-" % (os.getpid(), int.from_bytes(os.urandom(4), "big"))
        self._rid = 0

    def next_request_id(self):
        self._rid += 1
        return self._rid_prefix + b"%x" % self._rid

    def ready(self):
        return not self.draining and self.router.any_healthy()


async def serve(cfg, started=None):
    """Serve until SIGTERM/SIGINT, then drain. ``started(ctx)`` is called once listening."""
    loop = asyncio.get_running_loop()
    router = build_router(cfg, loop)
    backends = router.backends
    ctx = Context(cfg, loop, router)
    host, port = cfg.listen_address
    server = await loop.create_server(lambda: Downstream(ctx), host, port, backlog=4096, reuse_address=True)
    admin_server = await admin.start(ctx)
    tasks = [loop.create_task(health.check_forever(backends, cfg)), loop.create_task(_sweep(backends))]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "fleetproxy listening on http://%s:%d (admin %s), %d backend(s), speedups=%s",
        host, port, cfg.admin_listen, len(backends), IMPLEMENTATION,
    )
    if started is not None:
        started(ctx)
    await stop.wait()
    log.info("draining")
    ctx.draining = True
    server.close()
    deadline = loop.time() + 30.0
    while any(c.active is not None for c in ctx.connections) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for conn in list(ctx.connections):
        conn.close()
    for task in tasks:
        task.cancel()
    admin_server.close()
    for backend in backends:
        backend.pool.close()


async def _sweep(backends):
    while True:
        await asyncio.sleep(1.0)
        for backend in backends:
            backend.pool.sweep()


def run(cfg):
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    uvloop.run(serve(cfg))
