"""Micro benchmarks of _speedups.prefix, cache-aware routing's per-request work: the
pure-Python specification against its Cython twin, on an 8 KiB chat prompt.

    python -m pytest bench/micro/test_micro_prefix.py -q -p no:cacheprovider \\
        --benchmark-json bench/micro/results/$(date +%F)-prefix.json
    python bench/micro/summarize.py <that file>.json   # ratios, as markdown

A cache_aware request hashes its prompt's blocks once, asks the table for every endpoint's
match once, and records its blocks at the chosen endpoint once; the last group is that whole
sequence. Without a native build the native half is skipped (it fails instead under
FLEETPROXY_EXPECT_NATIVE=1, as the test suite does).
"""

import pytest

import _speedups

pure = _speedups.pure("prefix")
native = _speedups.native("prefix")

IMPLS = [pytest.param(pure, id="pure"), pytest.param(native, id="native")]

BLOCK = 256  # bytes, the cache_aware default
DEPTH = 32  # blocks hashed
ENDPOINTS = 4
SLOTS = 16384  # entries per endpoint: the prefix_index default


def _chat_text(size):
    """A chat prompt as the policy hashes it: a system prompt, then alternating turns."""
    parts = [
        (
            b"system: You are a careful assistant for a logistics company. Answer briefly, cite the "
            b"order number, and never invent tracking data.\n"
        )
    ]
    turn = 0
    while sum(map(len, parts)) < size:
        parts.append(
            b"user: Where is order %d? It was due on day %d and the tracking page shows no "
            b"movement since the depot scan.\n" % (40000 + turn, turn % 28 + 1)
        )
        parts.append(
            b"assistant: Order %d left the depot on day %d; the carrier reports a delay of "
            b"%d days at the regional hub, and it is now expected on day %d.\n"
            % (40000 + turn, turn % 28, turn % 3 + 1, turn % 28 + 3)
        )
        turn += 1
    return b"".join(parts)[:size]


TEXT = _chat_text(8192)
assert len(TEXT) == DEPTH * BLOCK
HASHES = pure.block_hashes(TEXT, BLOCK, DEPTH)
NOW = 1_000_000  # ms
OLDEST = NOW - 600_000


def _need(px):
    if px is None:
        reason = f"_speedups.prefix_c is not built ({_speedups.why_not_native('prefix')})"
        if _speedups.EXPECT_NATIVE:
            pytest.fail(f"FLEETPROXY_EXPECT_NATIVE is set but {reason}", pytrace=False)
        pytest.skip(reason)


def _table(px, holders):
    table = px.PrefixTable.local(ENDPOINTS, SLOTS)
    for endpoint in holders:
        table.record(endpoint, HASHES, NOW)
    return table


@pytest.mark.parametrize("px", IMPLS)
def test_block_hashes(benchmark, px):
    _need(px)
    benchmark.group = "block_hashes: 8 KiB chat text, block=256 (32 hashes)"
    assert benchmark(px.block_hashes, TEXT, BLOCK, DEPTH) == HASHES


@pytest.mark.parametrize("px", IMPLS)
def test_matches_all_hold(benchmark, px):
    """The most probes a request can cost: every endpoint holds the whole prefix."""
    _need(px)
    benchmark.group = "matches: 4 endpoints x 32 hashes, all hold all (128 probes)"
    table = _table(px, range(ENDPOINTS))
    assert benchmark(table.matches, HASHES, OLDEST) == [DEPTH] * ENDPOINTS


@pytest.mark.parametrize("px", IMPLS)
def test_matches_one_holds(benchmark, px):
    """A later turn of a conversation: one endpoint holds it, the others miss at once."""
    _need(px)
    benchmark.group = "matches: 4 endpoints x 32 hashes, one holds all (35 probes)"
    table = _table(px, [2])
    assert benchmark(table.matches, HASHES, OLDEST) == [0, 0, DEPTH, 0]


@pytest.mark.parametrize("px", IMPLS)
def test_record_refresh(benchmark, px):
    """Recording a prefix the endpoint already holds: the common case, a time refresh."""
    _need(px)
    benchmark.group = "record: 32 hashes at one endpoint, already held"
    table = _table(px, [2])
    now = iter(range(NOW + 1, NOW + 10**9))
    benchmark(lambda: table.record(2, HASHES, next(now)))


@pytest.mark.parametrize("px", IMPLS)
def test_request(benchmark, px):
    """One cache_aware request's calls, hashing included."""
    _need(px)
    benchmark.group = "request: block_hashes + matches (4 endpoints) + record"
    table = _table(px, [2])
    block_hashes, matches, record = px.block_hashes, table.matches, table.record

    def run():
        hashes = block_hashes(TEXT, BLOCK, DEPTH)
        found = matches(hashes, OLDEST)
        record(2, hashes, NOW)
        return found

    assert benchmark(run) == [0, 0, DEPTH, 0]
