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
    now = asyncio.get_running_loop().time()
    await asyncio.sleep((math.floor((now + period / 10) / period) + 1) * period - now)
