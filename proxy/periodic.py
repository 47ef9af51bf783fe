"""Periodic work on one grid, so that the worker's background tasks share their wakeups.

Why. An idle worker's CPU is its wakeups, not the work it wakes for: measured on this 2-CPU VM,
one costs 100-200 µs of CPU however little it does (the CPU leaves its idle state, the caches
are cold), where a kept-alive health check costs ~25 µs warm. The health checks, the load
scrapes, the pool sweep and the gauges' sampler each slept their period from whenever they
last finished, so each woke the worker on a clock of its own. ``tick`` sleeps to the next
multiple of the period on the loop's clock instead: periods that divide one another (0.5 s
scrapes, 1 s sweeps and samples, 2 s checks) fall on the same instants and share one wakeup.
The clock is the system's monotonic one, so the workers of a host tick together too: a
backend sees their checks at once rather than spread, which for a GET of /health is nothing.
"""

import asyncio
import math


async def tick(period):
    """Sleep until the next instant that is a whole multiple of ``period`` seconds and at
    least a tenth of it away: a task woken at a tick (or a millisecond before it: the loop's
    timers and clock have that grain) sleeps to the following one, not to the same again."""
    await asyncio.sleep(_until_tick(asyncio.get_running_loop().time(), period))


class Pace:
    """The rounds of a task with nothing to do while nothing is routed (load scrapes, pool
    sweeps, gauge samples): ``period`` apart while requests come, ``idle`` apart once a whole
    period passed with none routed and none in flight over the worker group
    (``router.traffic``), and at once when the next request this worker routes wakes them
    (``router.on_request``), not a long period later. Health checks pace so only where
    ``health.no_traffic_interval`` is set: by default a backend that dies while the proxy idles
    is still found before traffic meets it.

    Why. Measured on a 2-CPU VM, an idle worker woke 3 times a second (scrapes every 0.5 s,
    the sweep and the sampler every 1 s) for 4.4 ms of CPU a second: a wakeup there costs about
    a millisecond however little it does (a bare uvloop sleeping 1 s at a time: 0.65 ms). And
    each scrape makes a vLLM render its metrics: 3.4 ms of its API server's one loop. While
    requests come, the rounds are as before."""

    __slots__ = ("router", "period", "idle", "seen")

    def __init__(self, router, period, idle):
        self.router = router
        self.period = period
        self.idle = idle
        self.seen = None

    async def next(self):
        """Sleep until this task's next round."""
        router = self.router
        traffic = router.traffic() if router is not None else None
        if traffic is not None and traffic == self.seen and not traffic[1] and self.idle > self.period:
            await _quiet(router, self.idle)
        else:
            await tick(self.period)
        self.seen = traffic


async def _quiet(router, period):
    """``tick(period)``, ended early by the next request ``router`` places."""
    loop = asyncio.get_running_loop()
    woken = loop.create_future()

    def wake():
        if not woken.done():
            woken.set_result(None)

    if router.on_request is None:
        router.on_request = []
    router.on_request.append(wake)
    timer = loop.call_later(_until_tick(loop.time(), period), wake)
    try:
        await woken
    finally:
        timer.cancel()
        waiting = router.on_request
        if waiting is not None and wake in waiting:  # the timer's, not a request's, wake
            waiting.remove(wake)
            if not waiting:
                router.on_request = None  # nobody sleeps so: place() skips its call again


def _until_tick(now, period):
    return (math.floor((now + period / 10) / period) + 1) * period - now
