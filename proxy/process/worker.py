"""One serving process: installs uvloop, opens the listeners, serves, drains on a signal."""

import asyncio
import gc
import logging
import os
import signal
import socket
import sys

import msgspec
import orjson
import uvloop

from _speedups import IMPLEMENTATION, PrefixTable, not_native

from .. import discovery
from ..config import Config
from ..discovery.columns import Columns
from ..http.downstream import Downstream
from ..observe import Observer
from ..observe.table import MetricsTable
from ..periodic import Pace
from ..routing import prober
from ..routing.router import Router
from ..tenants.admission import Tenants
from ..tenants.table import TenantTable
from . import admin
from .context import Context
from .shm import MAX_SLOTS, Segment, SharedCounters

log = logging.getLogger("fleetproxy")


def loop_build():
    """Which uvloop serves: its version, and whether it keeps the GIL across its waits
    (third_party/uvloop/build.py, which ``make install`` runs)."""
    held = getattr(uvloop.loop, "HOLDS_GIL", 0)  # 2: its callbacks take none either; 1: an earlier build
    kept = " (the GIL kept across waits and callbacks)" if held >= 2 else " (the GIL kept across waits)"
    # Its own attribute, not importlib.metadata: that would import email, zipfile and csv into
    # every worker (~1.7 MiB) for one line of its log.
    return f"uvloop {uvloop.__version__}" + (kept if held else " (stock)")

# The cyclic collector's pace once serving (gc.set_threshold). Requests' objects are freed by
# reference counting; what the collector walks is mostly what lives: every open connection
# (tens of tracked objects each). A full collection walks all of them, and at 10,000 open
# streams one stops the loop for 0.2-0.3 s (bench/results/2026-12-03-capacity.md), so full
# collections are spaced out 10x (CPython 3.11 also waits for the long-lived objects to grow
# by a quarter), and what startup made is frozen out of every walk. The young generations keep
# CPython's pace: cycles still go within a few thousand allocations.
GC_THRESHOLDS = (700, 10, 100)


async def serve(cfg, started=None, sock=None, counters=None, slot=0, table=None, columns=None, metrics=(None, -1), stop=None,
                tenants=(None, -1)):
    """Serve until SIGTERM/SIGINT, then drain; a second signal exits at once.

    ``sock``: an inherited listening socket (under the supervisor), else bind cfg.listen.
    ``counters``/``slot``: this worker's row in the generation's shared counters; ``table``:
    the generation's shared prefix index; ``columns``: its claims on the columns kept for
    discovered members. ``tenants``: (the supervisor's tenants table, this worker's row).
    ``started(ctx, admin_port)`` is called once listening.
    """
    loop = asyncio.get_running_loop()
    router = Router(cfg, loop, table=table)
    if counters is not None:
        router.attach_counters(counters, slot)
    if columns is not None:
        router.use_columns(columns)
    endpoints = router.endpoints
    ctx = Context(cfg, loop, router)
    ctx.observe = Observer.build(cfg, loop, *metrics)  # metrics: (shared table, this worker's row)
    ctx.tenants = Tenants.build(cfg, *tenants)
    if ctx.tenants is not None:
        ctx.tenants.start(loop, router)
    if ctx.tenants is not None and ctx.observe is None:
        ctx.observe = Observer(loop)  # tenants read the response's usage from its Timing
    if sock is not None:
        server = await loop.create_server(lambda: Downstream(ctx), sock=sock, backlog=4096)
    else:
        host, port = cfg.listen_address
        server = await loop.create_server(lambda: Downstream(ctx), host, port, backlog=4096, reuse_address=True)
    admin_server = await admin.start(ctx)
    admin_port = admin_server.sockets[0].getsockname()[1]
    sweep = _sweep(endpoints, Pace(router, 1.0, cfg.no_traffic_interval))
    tasks = [loop.create_task(prober.check_forever(endpoints, cfg, router)), loop.create_task(sweep)]
    if cfg.load.scrape_interval and slot == 0:
        # Load reports are shared: one scraper per group is enough (slot 0, or the only worker).
        tasks.append(loop.create_task(prober.scrape_forever(endpoints, cfg, router.clock, router)))
    # Each worker discovers for itself (see proxy/discovery/__init__.py for why).
    tasks += discovery.start(router, loop)
    if ctx.observe is not None:
        tasks.append(loop.create_task(ctx.observe.sample_forever(ctx)))
    signals = stop is None  # an embedder (a test's thread) passes its own Event and sets it
    stop = stop or asyncio.Event()

    def on_signal():
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT) if signals else ():
        loop.add_signal_handler(sig, on_signal)
    log.info(
        "worker %d serving %s (admin %s), %d backend(s), speedups=%s, %s",
        slot, cfg.listen, "127.0.0.1:%d" % admin_port, len(endpoints), IMPLEMENTATION, loop_build(),
    )
    for why in not_native():  # a stale or partial build: `make install` (pip install .) rebuilds it
        log.warning("speedups: %s", why)
    if signals:  # the process is ours (not a test's thread): set its collector's pace
        gc.collect()
        gc.freeze()  # startup's objects (modules, config, routing tables) leave the collector's walks
        gc.set_threshold(*GC_THRESHOLDS)
        _trim_heap()
    if started is not None:
        started(ctx, admin_port)
    await stop.wait()
    await _drain(ctx, server, cfg.drain_timeout)
    for task in tasks:
        task.cancel()
    admin_server.close()
    for endpoint in endpoints:
        endpoint.pool.close()
    if ctx.observe is not None:
        ctx.observe.close()
    if ctx.tenants is not None:
        ctx.tenants.close()


async def _drain(ctx, server, timeout):
    """Stop accepting; let in-flight requests and streams finish (each answer then carries
    ``connection: close``); close connections that stay idle; give up at ``timeout``."""
    loop = ctx.loop
    ctx.draining = True
    server.close()
    start = loop.time()
    busy = [c for c in ctx.connections if c.active is not None or c.queue]
    log.info("draining: %d connection(s), %d busy", len(ctx.connections), len(busy))
    while loop.time() - start < timeout:
        if not any(c.active is not None or c.queue for c in ctx.connections):
            # Idle keep-alive clients get a moment to send one more request (answered with
            # connection: close) rather than a close racing their next request.
            if not ctx.connections or loop.time() - start > 1.0:
                break
        await asyncio.sleep(0.02)
    for conn in list(ctx.connections):
        conn.close()


async def _sweep(endpoints, pace):
    """Close pooled connections past their idle time. Idle, a pool's last ones close late or by
    the backend's own keep-alive timeout first (take_idle never hands out an expired one)."""
    while True:
        await pace.next()
        for endpoint in endpoints:
            endpoint.pool.sweep()


def setup_logging(cfg):
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )


def run(cfg):
    """One process, no supervisor (the demo and embedding use this)."""
    setup_logging(cfg)
    uvloop.run(serve(cfg))


def _trim_heap():
    """Give the C heap's free pages back to the system: startup (imports, config, routing
    tables) leaves about 0.6 MiB of them, which an idle worker would otherwise keep resident.
    glibc only; elsewhere nothing to do."""
    try:
        import ctypes  # loaded already under the supervisor (_die_with_parent)

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _die_with_parent():
    # If the supervisor is SIGKILLed, its workers must not linger holding the port.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def main():
    """Entry of a worker process started by the supervisor (``python -m proxy.process.worker``)."""
    _die_with_parent()
    spec = orjson.loads(os.environ.pop("FLEETPROXY_WORKER"))
    # The supervisor serves the public admin port; each worker answers on a private one.
    cfg = msgspec.structs.replace(
        msgspec.convert(spec["config"], Config), admin_listen="127.0.0.1:0"
    )
    setup_logging(cfg)
    slot = spec["slot"]
    counters = SharedCounters(MAX_SLOTS, spec["columns"], name=spec["shm"])
    index = Segment(0, name=spec["index"])
    table = PrefixTable(index.cells, spec["columns"], cfg.prefix_index.blocks_per_endpoint)
    claims = Segment(0, name=spec["claims"]) if spec.get("claims") else None
    columns = None
    if claims is not None:
        columns = Columns(claims.cells, spec["static"], spec["columns"] - spec["static"], claims.path)
    sock = socket.socket(fileno=spec["fd"])
    mtable = MetricsTable(name=spec["metrics"]) if spec.get("metrics") else None
    ttable = TenantTable(name=spec["tenants"]) if spec.get("tenants") else None

    def started(ctx, admin_port):
        sys.stdout.write("READY %d\n" % admin_port)
        sys.stdout.flush()

    try:
        uvloop.run(serve(cfg, started, sock=sock, counters=counters, slot=slot, table=table, columns=columns,
                            metrics=(mtable, spec.get("metrics_row", -1)),
                            tenants=(ttable, spec.get("tenants_row", -1))))
    finally:
        del table, columns
        if claims is not None:
            claims.close()
        index.close()
        counters.close()
        if mtable is not None:
            mtable.close()
        if ttable is not None:
            ttable.close()


if __name__ == "__main__":
    main()
