"""periodic.tick: background tasks whose periods divide one another wake together."""

import asyncio

import uvloop

from proxy.periodic import tick


def test_tasks_whose_periods_divide_share_their_wakeups():
    # Started 13 and 29 ms apart, the three must wake on the same instants: every wake of
    # the slower ones within the loop's timer grain (1 ms; 3 here for a busy machine) of
    # one of the 20 ms task's, and no task twice at one tick. (Each sleeping its period from
    # its own start, none would be.)
    async def run():
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.3
        woke = {0.02: [], 0.04: [], 0.08: []}

        async def every(period, delay):
            await asyncio.sleep(delay)
            while loop.time() < end:
                await tick(period)
                woke[period].append(loop.time())

        await asyncio.gather(every(0.02, 0), every(0.04, 0.013), every(0.08, 0.029))
        return woke

    woke = uvloop.run(run())
    assert len(woke[0.08]) >= 2
    fast = woke[0.02]
    last = max(fast)  # the slower ones may tick once more after the fast one stopped
    assert all(min(abs(t - f) for f in fast) <= 0.003 for t in woke[0.04] + woke[0.08] if t <= last), woke
    for times in woke.values():
        assert all(b - a > 0.01 for a, b in zip(times, times[1:])), woke
