"""periodic.tick: background tasks whose periods divide one another wake together."""

import asyncio

import uvloop

from proxy.periodic import tick


def test_tasks_whose_periods_divide_share_their_wakeups():
    # uvloop reads its clock once per turn of the loop, so tasks woken in one turn (one
    # wakeup of the process) read the same time. Started at different moments, the three
    # must still land on the same turns: every wake of the slower ones is one of the 20 ms
    # task's. (Each sleeping its period from its own start, none would.)
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
    fast = set(woke[0.02])
    last = max(fast)  # the slower ones may tick once more after the fast one stopped
    assert all(t in fast for t in woke[0.04] + woke[0.08] if t <= last), woke
