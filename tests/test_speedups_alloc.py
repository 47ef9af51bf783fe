"""The native streaming path allocates nothing per token beyond the bytes the transport hands over.

Two probes, over 10,000 vLLM-shaped SSE chunks fed one read each, several per read, and a plain
Content-Length body:

- a hard one: ``_testcapi.set_nomemory`` makes every allocation fail while the chunks are fed
  (in a child process, since a failure there is noisy). The feeding loop must need exactly as
  many allocations as the same loop that does not call ``feed`` (a constant two, for the probe
  itself); the pure-Python twin, which slices and makes ints, is shown to fail the same probe,
  so the probe can see allocations;
- portable ones: ``sys.getallocatedblocks()`` and ``tracemalloc`` show that nothing is kept
  per read (they cannot see an object made and freed at once; the probe above can).

Runs only against the native build (the pure twin makes objects by design).
"""

import os
import subprocess
import sys
import tracemalloc

import pytest

from builds import native_or_skip

native = native_or_skip("framing")  # at import: the whole module needs the native build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS = 10_000

PROBE = r'''
import sys, _testcapi
import _speedups
pure, native = _speedups.pure("framing"), _speedups.native("framing")

mode, case, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
fr = native if mode != "pure" else pure
event = (b'data: {"id":"chatcmpl-0","object":"chat.completion.chunk","created":1,"model":"tiny",'
         b'"choices":[{"index":0,"delta":{"content":" tok"},"finish_reason":null}]}\n\n')
chunk = b"%x\r\n%s\r\n" % (len(event), event)
f = fr.ResponseFramer()
if case == "sse":
    f.feed(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    reads = [chunk] * TOKENS
elif case == "sse-coalesced":
    f.feed(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    reads = [chunk * 4] * (TOKENS // 4)
else:
    f.feed(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (len(event) * TOKENS + 1))
    reads = [event] * TOKENS
feed = f.feed
it = iter(reads)
_testcapi.set_nomemory(start)
try:
    if mode == "baseline":
        for data in it:
            pass
    else:
        for data in it:
            feed(data)
finally:
    _testcapi.remove_mem_hooks()
assert f.error == "" and not f.done, f.error
print("fed", f.body_bytes)
'''.replace("TOKENS", str(TOKENS))


def _allocations_needed(mode, case):
    """Fewest allocations the loop in PROBE needs: the smallest `start` for set_nomemory that
    lets it finish (0 = none at all)."""
    for start in range(0, 8):
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, mode, case, str(start)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        if proc.returncode == 0 and "fed" in proc.stdout:
            return start
    return None  # more than we looked for: it allocates per read


@pytest.mark.parametrize("case", ["sse", "sse-coalesced", "content-length"])
def test_no_allocation_per_token_under_failing_allocator(case):
    pytest.importorskip("_testcapi")
    baseline = _allocations_needed("baseline", case)
    assert baseline is not None
    assert _allocations_needed("native", case) == baseline


def test_probe_sees_the_pure_twin_allocate():
    pytest.importorskip("_testcapi")
    assert _allocations_needed("pure", "sse") is None


def _stream():
    event = b'data: {"choices":[{"index":0,"delta":{"content":" tok"}}]}\n\n'
    chunk = b"%x\r\n%s\r\n" % (len(event), event)
    f = native.ResponseFramer()
    f.feed(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    return f, [chunk] * TOKENS, [chunk * 8] * (TOKENS // 8)


def test_no_growth_in_allocated_blocks():
    f, reads, coalesced = _stream()
    feed = f.feed
    feed(reads[0])
    before = sys.getallocatedblocks()
    for data in reads:
        feed(data)
    for data in coalesced:
        feed(data)
    after = sys.getallocatedblocks()
    assert after - before <= 2, after - before
    assert f.body_bytes > 0 and not f.error


def test_tracemalloc_sees_nothing_kept():
    # tracemalloc's peak cannot count objects made and freed at once (the probe above does);
    # what it shows is that nothing is kept per read: one object per token would be >= 320 KiB.
    f, reads, coalesced = _stream()
    feed = f.feed
    feed(reads[0])
    tracemalloc.start()
    try:
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for data in reads:
            feed(data)
        for data in coalesced:
            feed(data)
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert now - current < 4096 and peak - current < 4096, (current, now, peak)
