"""The event loop the workers run: uvloop as third_party/uvloop/build.py builds it, the GIL kept
across its waits while the interpreter has one thread (README, "The event loop and the GIL").

These hold that build to what the stock one does: another Python thread still runs while the
loop waits; ``stop()`` and ``run_until_complete()`` end a run as before; a signal still wakes a
waiting loop. Each runs in a child process with a deadline, so a loop that never lets go fails
here rather than hanging the suite. They run on whichever uvloop is installed; CI expects the
built one (``FLEETPROXY_EXPECT_HELD_GIL=1``, .ci/run).
"""

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import uvloop.loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELD = getattr(uvloop.loop, "HOLDS_GIL", False)


def _child(code, timeout=60):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _builder():
    spec = importlib.util.spec_from_file_location("uvbuild", os.path.join(ROOT, "third_party", "uvloop", "build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def test_the_built_loop_is_the_one_installed_where_expected():
    if not HELD and not os.environ.get("FLEETPROXY_EXPECT_HELD_GIL"):
        pytest.skip("the stock uvloop: third_party/uvloop/build.py did not run here (make install runs it)")
    assert HELD >= _builder().LEVEL  # this change's build, not an earlier one's
    out = subprocess.run([sys.executable, "-m", "proxy", "--version"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "+holdgil (the GIL kept across waits and callbacks)" in out


def test_the_change_fits_the_installed_release():
    # A uvloop release whose loop.pyx moved on would build stock, and say so; this says it first.
    build = _builder()
    with open(os.path.join(os.path.dirname(uvloop.loop.__file__), "loop.pyx")) as f:
        source = f.read()
    if HELD:  # the wheel carries its changed source: the change is in, and cannot go in twice
        assert "_sole_thread()" in source
        assert build.patched(source) is None
    else:
        changed = build.patched(source)
        assert changed is not None
        assert changed.count("_sole_thread()") == 2  # where it is defined, and the one wait that asks it
        assert changed.count("fleetproxy_hold(1)") == 1  # around that wait alone


def test_another_thread_runs_while_the_loop_waits():
    # The thread computes in Python, so it needs the GIL; the loop has nothing to do but wait
    # for it, and one timer 10 s on. A loop that kept the GIL across that wait would let the
    # thread run only once the timer woke it: the answer would come after the timer.
    assert _child("""
        import asyncio, threading, uvloop

        async def main():
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            fired = []
            loop.call_later(10, fired.append, 1)

            def work():
                loop.call_soon_threadsafe(done.set_result, sum(range(3_000_000)))

            thread = threading.Thread(target=work)
            thread.start()
            print(await done, "after" if fired else "before")
            thread.join()
            await asyncio.sleep(0.01)  # alone again: the loop serves as before
            print("alone")

        uvloop.run(main())
    """) == [str(sum(range(3_000_000))), "before", "alone"]


def test_a_loop_in_another_thread_takes_the_gil_for_its_callbacks():
    # The loop's callbacks skip taking the GIL only in the thread whose uv_run holds it. Here a
    # callback of that loop starts a thread with a loop of its own and computes in Python until
    # that loop has served 200 echoes: the second loop's callbacks run while the first is still
    # inside its held run, so with a process-wide "held" they would run Python code on the first
    # thread's state without the GIL (a crash, or a wrong count), not take it as they must.
    assert _child("""
        import asyncio, threading, time, uvloop

        def other():
            async def echo(reader, writer):
                while data := await reader.read(100):
                    writer.write(data)
                    await writer.drain()
                writer.close()

            async def main():
                server = await asyncio.start_server(echo, "127.0.0.1", 0)
                reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
                total = 0
                for i in range(200):
                    writer.write(b"%d\\n" % i)
                    total += int(await reader.readline())
                writer.close()
                server.close()
                return total

            results.append(uvloop.run(main()))

        def busy():
            thread = threading.Thread(target=other)
            thread.start()
            deadline = time.monotonic() + 30
            spins = 0
            while not results and time.monotonic() < deadline:
                spins = sum(range(1000)) + spins % 7  # Python work inside the held run's callback
            thread.join()

        results = []
        loop = uvloop.new_event_loop()
        loop.call_soon(busy)
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.close()
        print(results[0])
    """) == [str(sum(range(200)))]


def test_stop_and_run_until_complete_end_a_run_as_before():
    assert _child("""
        import asyncio, uvloop

        loop = uvloop.new_event_loop()
        loop.call_later(0.01, loop.stop)
        loop.run_forever()  # stop() from a timer
        loop.call_soon(loop.stop)
        loop.run_forever()  # stop() before the first wait
        loop.stop()
        loop.run_forever()  # stop() before the run: one pass, then back

        async def later(n):
            await asyncio.sleep(0.01)
            return n

        print(loop.run_until_complete(later(1)), loop.run_until_complete(later(2)))
        loop.close()
    """, timeout=30) == ["1", "2"]


def test_a_signal_wakes_a_waiting_loop():
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import asyncio, signal, uvloop

        async def main():
            loop = asyncio.get_running_loop()
            got = loop.create_future()
            loop.add_signal_handler(signal.SIGUSR1, got.set_result, "woken")
            print("waiting", flush=True)
            print(await asyncio.wait_for(got, 20), flush=True)

        uvloop.run(main())
    """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "waiting"
        child.send_signal(signal.SIGUSR1)
        assert child.stdout.readline().strip() == "woken"
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
