"""Cache-aware routing's hot path, on both builds: the prefix block hashes and the prefix table,
the pure-Python specification (_speedups.prefix) and its Cython twin (_speedups.prefix_c).

The unit tests pin the specification on both builds: the hash is zlib's CRC-32 and Adler-32 of
the whole prefix, so values are fixed across processes and releases; the table's cell layout is
fixed, so the two builds (and processes) can share one buffer. The properties then hold the two
builds to identical results: hashes of random texts, and random sequences of record, match,
matches and forget on small tables, starting empty or from garbage cells (what a torn write in a
shared segment could leave), compared cell for cell after every step.
"""

import os
import random
from array import array
import subprocess
import sys
import zlib
from importlib.machinery import EXTENSION_SUFFIXES
from multiprocessing import shared_memory

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _speedups
from builds import native_or_skip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pure = _speedups.pure("prefix")
MASK = (1 << 63) - 1
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(params=["pure", "native"])
def px(request):
    """The prefix module under test."""
    if request.param == "pure":
        return pure
    return native_or_skip("prefix")


def reference(text, block, limit):
    """The specification's words, literally: each hash from the whole prefix, not chained."""
    out = []
    for i in range(min(limit, len(text) // block)):
        prefix = text[: (i + 1) * block]
        h = ((zlib.adler32(prefix) << 31) ^ zlib.crc32(prefix)) & MASK
        out.append(h or 1)
    return out


def test_native_is_a_compiled_twin():
    native = native_or_skip("prefix")
    assert native.__file__.endswith(tuple(EXTENSION_SUFFIXES))  # compiled, not a .py copy
    assert native.PrefixTable is not pure.PrefixTable
    assert native.MASK == pure.MASK and native.MIN_BLOCK == pure.MIN_BLOCK


def test_seam_exports_the_build_it_picked():
    native = _speedups.native("prefix")
    chosen = pure if _speedups.PURE or native is None else native
    assert _speedups.block_hashes is chosen.block_hashes
    assert _speedups.PrefixTable is chosen.PrefixTable


# -- block_hashes ---------------------------------------------------------------------------

CHAT = b"".join(
    b'{"role":"user","content":"turn %d: tell me about block %d of the cache"}' % (i, i * 7)
    for i in range(200)
)


def test_hashes_identify_whole_prefixes(px):
    assert px.block_hashes(CHAT, 256, 32) == reference(CHAT, 256, 32)
    assert px.block_hashes(CHAT, 16, 1000) == reference(CHAT, 16, 1000)


def test_golden_values(px):
    # Pinned: the hash is shared between processes and proxy replicas, and across a rolling
    # upgrade two releases route by the same table. Changing the scheme must be deliberate.
    assert px.block_hashes(b"0123456789abcdef" * 3, 16, 8) == [
        1131954032223776819,
        4790427451741811982,
        1754159284217423736,
    ]
    assert px.block_hashes(bytes(range(256)), 128, 2) == [3100042113507986775, 6267673403118161011]


def test_only_full_blocks_up_to_limit(px):
    text = b"x" * (3 * 64 + 63)
    assert len(px.block_hashes(text, 64, 10)) == 3  # the partial fourth block is not hashed
    assert len(px.block_hashes(text, 64, 2)) == 2
    assert px.block_hashes(text, 64, 0) == []
    assert px.block_hashes(b"", 16, 5) == []
    assert px.block_hashes(b"x" * 15, 16, 5) == []
    assert px.block_hashes(text, 10**9, 5) == []
    assert px.block_hashes(text, 64, 10**30) == px.block_hashes(text, 64, 3)


def test_chained_each_hash_depends_on_every_earlier_byte(px):
    base = px.block_hashes(CHAT, 64, 20)
    for pos in (0, 63, 64, 500, 64 * 20 - 1):
        changed = bytearray(CHAT)
        changed[pos] ^= 1
        hashes = px.block_hashes(bytes(changed), 64, 20)
        k = pos // 64
        assert hashes[:k] == base[:k]
        assert all(a != b for a, b in zip(hashes[k:], base[k:]))


def test_hashes_are_positive_int64(px):
    for block in (16, 17, 100, 256):
        for h in px.block_hashes(b"\xff" * 4096 + CHAT, block, 64):
            assert 1 <= h <= MASK


def test_bytes_like_texts_hash_alike(px):
    expected = px.block_hashes(CHAT, 32, 50)
    assert px.block_hashes(bytearray(CHAT), 32, 50) == expected
    assert px.block_hashes(memoryview(CHAT), 32, 50) == expected
    assert px.block_hashes(memoryview(b"junk" + CHAT)[4:], 32, 50) == expected


def test_blocks_longer_than_adler_reduction_run(px):
    # Adler-32 reduces its sums every 5552 bytes: blocks across that run, of the byte that
    # grows the sums fastest.
    text = b"\xff" * 40000
    for block in (5551, 5552, 5553, 11104, 20000):
        assert px.block_hashes(text, block, 10) == reference(text, block, 10)


@pytest.fixture(params=["table loops", "vector"])
def checksums(request):
    """The native build's checksums one way, then the other (the vector one where the CPU has
    the instructions, else skipped); both must give zlib's values."""
    native = native_or_skip("prefix")
    if request.param == "vector" and not native.simd():
        pytest.skip("this CPU lacks PCLMULQDQ or AVX2")
    before = native.simd(request.param == "vector")
    yield native
    native.simd(before)


def test_checksums_give_zlibs_values_either_way(checksums):
    # Lengths about the vector steps (16 and 64 bytes for the CRC, 32 for Adler-32) and the
    # Adler reduction run (5552), of random bytes and of the byte that grows the sums fastest.
    rnd = random.Random(7)
    lengths = sorted({n + d for n in (16, 32, 48, 64, 128, 256, 5552, 11104) for d in (-1, 0, 1, 15, 17) if n + d >= 16})
    for fill in ("random", "ff"):
        text = rnd.randbytes(40000) if fill == "random" else b"\xff" * 40000
        for block in lengths:
            assert checksums.block_hashes(text, block, 3) == reference(text, block, 3), (fill, block)
    assert checksums.block_hashes(CHAT, 256, 64) == reference(CHAT, 256, 64)


def test_checksums_vector_off_and_on_again():
    native = native_or_skip("prefix")
    before = native.simd()
    try:
        assert native.simd(False) == before
        assert native.simd() is False
        native.simd(True)
        assert native.simd() == before  # on again only where the CPU has the instructions
    finally:
        native.simd(before)


def reference_key(text, opening):
    """The conversation key, literally: the opening (no longer than the text) and a NUL as one
    block, as cache_aware made it before prompt_hashes."""
    opening = min(opening, len(text))
    return reference(text[:opening] + b"\x00", opening + 1, 1)[0] if opening >= 16 else 0


@SETTINGS
@given(
    text=st.binary(max_size=3000),
    block=st.sampled_from([16, 17, 64, 100, 256]),
    limit=st.integers(0, 40),
    opening=st.integers(0, 3100),
)
def test_prompt_hashes_are_block_hashes_and_the_opening_key(text, block, limit, opening):
    for px in (pure, _speedups.native("prefix") or pure):
        hashes, key = px.prompt_hashes(text, block, limit, opening)
        assert hashes.typecode == "q" and hashes.tolist() == reference(text, block, limit)
        assert key == reference_key(text, opening)


def test_prompt_hashes_key_past_the_hashed_blocks(px):
    # The opening may end beyond the blocks the depth hashes, or before the first one ends.
    for limit, opening in ((2, 1000), (0, 300), (10, 40), (10, 64), (10, 640), (10, len(CHAT))):
        hashes, key = px.prompt_hashes(CHAT, 64, limit, opening)
        assert hashes.tolist() == reference(CHAT, 64, limit)
        assert key == reference_key(CHAT, opening)
    hashes, key = px.prompt_hashes(CHAT, 64, 5, 15)
    assert (hashes.tolist(), key) == (reference(CHAT, 64, 5), 0)


def test_same_in_another_process_with_another_hash_seed(px):
    code = (
        "import sys, _speedups; m = _speedups.native('prefix') if sys.argv[1] == 'native' else "
        "_speedups.pure('prefix'); print(m.block_hashes(b'hello world, ' * 40, 16, 100))"
    )
    which = "pure" if px is pure else "native"
    out = subprocess.run(
        [sys.executable, "-c", code, which],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout
    assert out.strip() == str(px.block_hashes(b"hello world, " * 40, 16, 100))


@pytest.mark.parametrize(
    "args, error",
    [
        ((CHAT, 15, 3), ValueError),  # block below 16 bytes
        ((CHAT, 16, -1), ValueError),
        (("text", 16, 1), TypeError),
        ((None, 16, 1), TypeError),
        ((CHAT, 16.0, 1), TypeError),
    ],
)
def test_block_hashes_rejects(px, args, error):
    with pytest.raises(error):
        px.block_hashes(*args)


# -- PrefixTable: geometry and layout --------------------------------------------------------


def test_cells_needed_and_local(px):
    assert px.PrefixTable.cells_needed(3, 8) == 48 == px.cells_needed(3, 8)
    table = px.PrefixTable.local(3, 8, 2)
    assert (table.endpoints, table.slots, table.ways, table.sets) == (3, 8, 2, 4)
    assert px.PrefixTable.local(2, 8).ways == 4


@pytest.mark.parametrize(
    "endpoints, slots, ways",
    [(0, 8, 4), (2, 6, 4), (2, 2, 4), (2, 8, 0), (2, 0, 1)],
)
def test_geometry_is_validated(px, endpoints, slots, ways):
    with pytest.raises(ValueError):
        px.PrefixTable(bytearray(8 * 64), endpoints, slots, ways)


def test_cells_must_be_writable_and_large_enough(px):
    with pytest.raises(ValueError):
        px.PrefixTable(bytes(8 * 32), 2, 8, 4)
    with pytest.raises(ValueError):
        px.PrefixTable(bytearray(8 * 31), 2, 8, 4)
    # Longer is fine (a shared segment may be rounded up to a page), and bytes or int64 views.
    px.PrefixTable(bytearray(8 * 40), 2, 8, 4)
    px.PrefixTable(memoryview(bytearray(8 * 32)).cast("q"), 2, 8, 4)


def test_layout_of_the_cells(px):
    # Per endpoint `slots` (hash, last_used) pairs; hash h in set h % sets of `ways` entries.
    # Pinned, because processes running either build share one segment.
    buf = bytearray(8 * px.cells_needed(2, 8))
    table = px.PrefixTable(buf, 2, 8, 2)  # 4 sets of 2
    table.record(1, [6], 70)  # set 2 of endpoint 1: cells (8 + 2 * 2) * 2 = 24, 25
    table.record(1, [10], 71)  # set 2 again: its second entry
    table.record(0, [3], 72)  # set 3 of endpoint 0: cells 12, 13
    cells = memoryview(buf).cast("q").tolist()
    assert cells[24:28] == [6, 70, 10, 71]
    assert cells[12:14] == [3, 72]
    assert sum(1 for c in cells if c) == 6


# -- PrefixTable: behaviour ------------------------------------------------------------------


def test_match_counts_leading_hashes_until_the_first_miss(px):
    table = px.PrefixTable.local(3, 64, 4)
    table.record(1, [11, 12, 13, 15], 100)
    assert table.match(1, [11, 12, 13, 14, 15], 0) == 3
    assert table.match(1, [11, 12, 13, 15], 0) == 4
    assert table.match(1, [12, 11], 0) == 2
    assert table.match(1, [99, 11], 0) == 0
    assert table.match(1, [], 0) == 0
    assert table.match(0, [11], 0) == 0
    assert table.matches([11, 12, 13, 14], 0) == [0, 3, 0]


def test_oldest_ages_records_out(px):
    table = px.PrefixTable.local(1, 16, 4)
    table.record(0, [1, 2], 100)
    table.record(0, [3], 200)
    assert table.match(0, [1, 2, 3], 100) == 3
    assert table.match(0, [1, 2, 3], 101) == 0
    assert table.match(0, [3], 200) == 1
    assert table.matches([1, 2, 3], 150) == [0]


def test_record_refreshes_and_never_moves_time_back(px):
    table = px.PrefixTable.local(1, 4, 4)
    table.record(0, [7], 100)
    table.record(0, [7], 300)
    assert table.match(0, [7], 300) == 1
    table.record(0, [7], 200)  # a worker whose clock read came a moment earlier
    assert table.match(0, [7], 300) == 1


def test_full_set_evicts_least_recently_used(px):
    table = px.PrefixTable.local(1, 2, 2)  # one set of two
    table.record(0, [1], 10)
    table.record(0, [2], 20)
    table.record(0, [1], 30)  # 1 is now the newer
    table.record(0, [3], 40)  # evicts 2
    assert table.matches([1], 0) == [1]
    assert table.match(0, [2], 0) == 0
    assert table.match(0, [3], 0) == 1


def test_empty_entries_are_filled_before_anything_is_evicted(px):
    table = px.PrefixTable.local(1, 4, 4)
    table.record(0, [1, 2, 3, 4], 10)
    table.forget(0)
    table.record(0, [5], 5)  # older than anything before, but the set had room
    table.record(0, [6, 7, 8], 6)
    assert table.match(0, [5, 6, 7, 8], 0) == 4


def test_ties_evict_the_first_entry(px):
    buf = bytearray(8 * px.cells_needed(1, 3))
    table = px.PrefixTable(buf, 1, 3, 3)
    table.record(0, [1, 2, 3], 10)
    table.record(0, [4], 11)
    assert memoryview(buf).cast("q").tolist() == [4, 11, 2, 10, 3, 10]


def test_forget_empties_one_endpoint(px):
    table = px.PrefixTable.local(2, 8, 4)
    table.record(0, [1, 2], 10)
    table.record(1, [1, 2], 10)
    table.forget(0)
    assert table.matches([1, 2], 0) == [0, 2]


def test_any_iterable_of_hashes(px):
    table = px.PrefixTable.local(2, 8, 4)
    table.record(1, (h for h in (5, 6)), 10)
    assert table.matches((5, 6), 0) == [0, 2]
    assert table.match(1, iter([5]), 0) == 1


def test_int64_arrays_of_hashes_read_as_lists(px):
    table = px.PrefixTable.local(2, 4096, 4)
    hashes, _ = px.prompt_hashes(CHAT, 16, 300, 0)
    assert len(hashes) == 300  # past the compiled twin's stack
    table.record(1, hashes, 10)
    assert table.matches(hashes, 0) == table.matches(hashes.tolist(), 0) == [0, 300]
    assert table.match(1, array("q", hashes[:7].tolist() + [999]), 0) == 7
    assert table.matches(array("Q", hashes[:3]), 0) == [0, 3]  # other arrays: int by int


def test_long_hash_lists(px):
    # More hashes than the compiled twin keeps on its stack.
    table = px.PrefixTable.local(2, 4096, 4)
    hashes = list(range(1, 301))
    table.record(0, hashes, 1)
    assert table.matches(hashes, 0) == [300, 0]
    assert table.match(0, hashes + [999], 0) == 300


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda t: t.record(2, [1], 0), IndexError),
        (lambda t: t.record(-1, [1], 0), IndexError),
        (lambda t: t.match(5, [1], 0), IndexError),
        (lambda t: t.forget(2), IndexError),
        (lambda t: t.record(0, [1, 0], 0), ValueError),  # 0 marks an empty entry
        (lambda t: t.record(0, [-5], 0), ValueError),
        (lambda t: t.record(0, [1 << 63], 0), ValueError),
        (lambda t: t.matches([1.5], 0), TypeError),
        (lambda t: t.record(0, array("q", [1, 0]), 0), ValueError),  # int64 arrays, read as they are
        (lambda t: t.matches(array("q", [-5, 2]), 0), ValueError),
        (lambda t: t.record(0, array("d", [1.5]), 0), TypeError),
        (lambda t: t.record(0, [1], 1 << 63), OverflowError),
        (lambda t: t.match(0, [1], -(1 << 63) - 1), OverflowError),
    ],
)
def test_bad_arguments_raise_and_write_nothing(px, call, error):
    buf = bytearray(8 * px.cells_needed(2, 8))
    table = px.PrefixTable(buf, 2, 8, 4)
    with pytest.raises(error):
        call(table)
    assert not any(buf)


def test_extreme_values_are_accepted(px):
    table = px.PrefixTable.local(1, 8, 4)
    table.record(0, [MASK, 1], -(1 << 63))
    assert table.match(0, [MASK, 1], -(1 << 63)) == 2
    table.record(0, [MASK], MASK)
    assert table.match(0, [MASK], MASK) == 1


def test_both_builds_share_one_buffer():
    native = native_or_skip("prefix")
    buf = bytearray(8 * pure.cells_needed(3, 16))
    a = pure.PrefixTable(buf, 3, 16, 4)
    b = native.PrefixTable(buf, 3, 16, 4)
    hashes = pure.block_hashes(CHAT, 64, 40)
    a.record(2, hashes[:30], 1000)
    b.record(0, hashes[:5], 1000)
    assert a.matches(hashes, 0) == b.matches(hashes, 0) == [5, 0, a.match(2, hashes, 0)]
    b.forget(2)
    assert a.matches(hashes, 0) == [5, 0, 0]


def test_shared_memory_across_processes(px):
    which = "pure" if px is pure else "native"
    shm = shared_memory.SharedMemory(create=True, size=8 * px.cells_needed(4, 64))
    try:
        table = px.PrefixTable(shm.buf.cast("q"), 4, 64, 4)
        code = (
            "import sys, _speedups\n"
            "from multiprocessing import shared_memory, resource_tracker\n"
            "m = _speedups.native('prefix') if sys.argv[2] == 'native' else _speedups.pure('prefix')\n"
            "shm = shared_memory.SharedMemory(name=sys.argv[1])\n"
            "resource_tracker.unregister(shm._name, 'shared_memory')\n"
            "t = m.PrefixTable(shm.buf.cast('q'), 4, 64, 4)\n"
            "t.record(3, m.block_hashes(b'shared prompt text ' * 20, 16, 10), 500)\n"
            "del t\n"
            "shm.close()\n"
        )
        subprocess.run([sys.executable, "-c", code, shm.name, which], cwd=ROOT, check=True)
        hashes = px.block_hashes(b"shared prompt text " * 20, 16, 10)
        assert table.matches(hashes, 500) == [0, 0, 0, 10]
        del table  # the table holds a view of the segment: drop it before close()
    finally:
        shm.close()
        shm.unlink()


# -- the two builds give identical results ---------------------------------------------------


@st.composite
def texts(draw):
    kind = draw(st.sampled_from(["random", "ff", "chat"]))
    if kind == "random":
        return draw(st.binary(max_size=3000))
    if kind == "ff":  # the byte that grows Adler's sums fastest
        return b"\xff" * draw(st.integers(0, 30000))
    return CHAT[: draw(st.integers(0, len(CHAT)))]


@SETTINGS
@given(text=texts(), block=st.one_of(st.integers(16, 300), st.integers(16, 12000)), limit=st.integers(0, 80))
def test_block_hashes_builds_agree(text, block, limit):
    native = native_or_skip("prefix")
    expected = pure.block_hashes(text, block, limit)
    assert native.block_hashes(text, block, limit) == expected
    assert native.block_hashes(bytearray(text), block, limit) == expected
    if len(expected) <= 8:  # the literal form hashes every prefix from the start
        assert expected == reference(text, block, limit)


def _geometry():
    return st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4))  # endpoints, sets, ways


@st.composite
def table_runs(draw):
    endpoints, sets, ways = draw(_geometry())
    slots = sets * ways
    n = pure.cells_needed(endpoints, slots)
    if draw(st.booleans()):
        cells = [0] * n
    else:  # what a torn write or a foreign writer could leave: anything
        cells = draw(
            st.lists(
                st.one_of(
                    st.integers(-(1 << 63), MASK), st.integers(0, 12), st.sampled_from([0, MASK, -(1 << 63)])
                ),
                min_size=n,
                max_size=n,
            )
        )
    # Few distinct hashes and times, so sets fill, collide and evict, and ties happen.
    pool = draw(st.lists(st.one_of(st.integers(1, 40), st.integers(MASK - 8, MASK)), min_size=1, max_size=12))
    # As lists and as tuples (the policy's conversation key is a tuple): both read without a copy.
    hashes = st.lists(st.sampled_from(pool), max_size=10).flatmap(lambda h: st.sampled_from([h, tuple(h)]))
    times = st.one_of(st.integers(0, 20), st.sampled_from([-(1 << 63), MASK]))
    endpoint = st.integers(0, endpoints - 1)
    op = st.one_of(
        st.tuples(st.just("record"), endpoint, hashes, times),
        st.tuples(st.just("match"), endpoint, hashes, times),
        st.tuples(st.just("matches"), hashes, times),
        st.tuples(st.just("forget"), endpoint),
    )
    return endpoints, slots, ways, cells, draw(st.lists(op, max_size=40))


@SETTINGS
@given(run=table_runs())
def test_table_builds_agree(run):
    native = native_or_skip("prefix")
    endpoints, slots, ways, cells, ops = run
    bufs = [bytearray(8 * len(cells)) for _ in range(2)]
    for buf in bufs:
        view = memoryview(buf).cast("q")
        for i, c in enumerate(cells):
            view[i] = c
    tables = [
        pure.PrefixTable(bufs[0], endpoints, slots, ways),
        native.PrefixTable(bufs[1], endpoints, slots, ways),
    ]
    for op in ops:
        name, *args = op
        results = [getattr(t, name)(*args) for t in tables]
        assert results[0] == results[1], op
        assert bufs[0] == bufs[1], op
        if name == "matches":
            assert results[0] == [tables[0].match(e, *args) for e in range(endpoints)]
