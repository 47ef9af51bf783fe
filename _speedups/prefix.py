"""The hot path of cache-aware routing: hashes of a prompt's prefix blocks, and a shared table of
which endpoint was last sent which of them.

How this works. vLLM's prefix cache keeps the KV of a prompt in blocks of a fixed number of
tokens, and a block is reused only together with every block before it: block i is keyed by the
whole prefix up to its end. The proxy mirrors that over bytes (it never tokenizes):

- ``block_hashes(text, block, limit)`` cuts the prompt's bytes into blocks of ``block`` bytes and
  gives one 63-bit hash per *full* block, at most ``limit`` of them (a trailing partial block is
  not hashed: vLLM caches only full blocks). Hash i identifies ``text[:(i + 1) * block]``: it is
  chained, so two prompts share hash i only if they share (with overwhelming probability) all
  their first i + 1 blocks.

- ``PrefixTable`` remembers, per endpoint, the hashes recently sent there and when. A request's
  hashes are ``record``-ed at the endpoint it was routed to; ``matches`` tells, for every
  endpoint, how many of a new request's leading blocks that endpoint was recently sent: the
  blocks its cache most likely still holds. The table is a guess about the endpoint's cache, never
  the truth (vLLM evicts on its own), so the worst an error here can do is a worse routing choice.

The hash. Both CRC-32 and Adler-32 (zlib's, bit for bit) run over the text block by block, each
continuing from its value after the previous block, so each running value depends on every byte
so far. Hash i is ``((adler << 31) ^ crc) & (2**63 - 1)`` after block i, with 0 mapped to 1
(0 marks an empty slot in the table). CRC-32 goes in the low bits because the table picks a set
with ``h % sets``, which reads mostly the low bits: CRC's low bits depend on every byte, while
Adler's low half is a plain byte sum that clusters for texts of similar length and alphabet. The
result is the same in every process and on every run (never Python's salted ``hash()``), and it
is not cryptographic: a client that crafts a colliding prompt only steers its own request to an
endpoint that may not hold its prefix. zlib does the per-byte work in C, so this module spends
Python time per block only (about 0.4 µs a block); the compiled twin (prefix_c.pyx) computes the
same two checksums itself in one C loop.

The table. ``cells`` is a flat buffer of int64, ``endpoints * slots * 2`` of them: per endpoint,
``slots`` entries of (hash, last_used). The entries form ``slots // ways`` sets of ``ways``
entries; hash h lives only in set ``h % sets`` of each endpoint, so a lookup reads ``ways``
entries and a record replaces within one set: the entry holding h (its time refreshed), else an
empty one (hash 0), else the least recently used one. ``last_used`` is whatever clock the caller
passes as ``now`` (milliseconds of a monotonic clock shared by the worker processes);
``match`` counts a hash only if its entry is at least ``oldest``, so old records age out without
a sweep.

Sharing. ``cells`` may be a ``multiprocessing.shared_memory`` buffer that every worker maps, so
each worker routes on what all of them sent. There is no lock; writers in several processes may
race on one entry, and readers may read an entry mid-write. That is safe by construction:

- every value in ``cells`` is only ever compared, never used as an index or a length. Offsets
  come from the arguments (endpoint, h % sets, ways), all checked, so whatever the cells hold,
  even garbage, a call cannot raise or reach outside the buffer. It can only miss or hit wrongly;
- each cell is one aligned 8-byte word, stored and loaded whole (a single store on the 64-bit
  machines this runs on), so a torn *cell* cannot occur. A torn *entry* can: a reader may pair a
  hash with a time written for another hash, or two writers may interleave. Every hash in the
  table was recorded at that endpoint by some writer at some time, and every time was a real
  ``now``, so a torn entry means only "h was sent there, the age is off": a stale hit or a miss,
  both plain routing misjudgements that the next record repairs;
- an insert writes the time first and the hash last, ``forget`` clears the hash first, and a
  reader loads an entry's hash before its time. Where stores and loads keep program order
  (x86-64; arm64 may reorder them, and then this only narrows the window), a reader that sees
  the new hash also sees a time at least as new, so a fresh record is not read as aged out; in
  the window between the two stores, the evicted hash shows with the new time: a stale hit for a
  prefix that was at that endpoint a moment before;
- a refresh never moves a time backwards (two workers may carry ``now`` values a millisecond
  apart), and skips the store when the time would not change, so the hot entries of a busy
  prefix are not rewritten by every worker on every request (each store to a shared cache line
  costs the other cores a miss).

This module is the specification. ``prefix_c.pyx`` is its compiled twin, written apart (not the
augmenting ``.pxd`` of framing.py) because its checksums are C loops over the bytes that this
module leaves to zlib, and its table reads the cells through a typed int64 view with no Python
object per probe. Both builds must give identical results (tests/test_prefix.py).
"""

from array import array
from operator import index
from zlib import adler32, crc32

MASK = (1 << 63) - 1  # hashes are positive int64: 1 <= h <= MASK; 0 marks an empty entry
MIN_BLOCK = 16  # bytes


def block_hashes(text, block, limit):
    """The chained hashes of the first ``limit`` full blocks of ``block`` bytes of ``text``."""
    if block < MIN_BLOCK:
        raise ValueError(f"block must be at least {MIN_BLOCK} bytes, not {block}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    view = memoryview(text).cast("B")
    end = min(limit, len(view) // block) * block
    out = []
    crc = 0
    adler = 1  # the checksums' own initial values: zlib.crc32(b"") and zlib.adler32(b"")
    for start in range(0, end, block):
        piece = view[start : start + block]
        crc = crc32(piece, crc)
        adler = adler32(piece, adler)
        out.append(((adler << 31) ^ crc) & MASK or 1)
    return out


def prompt_hashes(text, block, limit, opening):
    """(``block_hashes(text, block, limit)`` as an ``array('q')``, the conversation key): the
    hash that ``block_hashes`` gives ``text[:opening] + b"\\x00"`` as its one block, or 0 where
    ``opening`` (at most the text's length) is under MIN_BLOCK. Computed from the checksums, not
    from a copy of the opening. An array, because the compiled table reads one as it is."""
    hashes = array("q", block_hashes(text, block, limit))
    view = memoryview(text).cast("B")[:max(opening, 0)]
    if len(view) < MIN_BLOCK:
        return hashes, 0
    crc = crc32(b"\x00", crc32(view))
    adler = adler32(b"\x00", adler32(view))
    return hashes, ((adler << 31) ^ crc) & MASK or 1


def cells_needed(endpoints, slots):
    """How many int64 cells a table of ``endpoints`` x ``slots`` entries needs."""
    return endpoints * slots * 2


def _checked(hashes):
    # All checked before any is used, so a bad hash fails the call before it wrote anything.
    out = [index(h) for h in hashes]
    if out and (min(out) < 1 or max(out) > MASK):
        raise ValueError(f"a prefix hash must be in [1, 2**63), not {min(out) if min(out) < 1 else max(out)}")
    return out


def _time(t):
    t = index(t)
    if not -(1 << 63) <= t <= MASK:
        raise OverflowError(f"a time must fit in int64, not {t}")
    return t


class PrefixTable:
    """Per endpoint, a set-associative table of recently sent prefix hashes and when.

    The table holds a view of ``cells`` for as long as it lives: drop every reference to it
    before ``SharedMemory.close()``, which refuses (BufferError) while a view remains.
    """

    def __init__(self, cells, endpoints, slots, ways=4):
        endpoints, slots, ways = index(endpoints), index(slots), index(ways)
        if endpoints < 1:
            raise ValueError(f"endpoints must be >= 1, not {endpoints}")
        if ways < 1:
            raise ValueError(f"ways must be >= 1, not {ways}")
        if slots < ways or slots % ways:
            raise ValueError(f"slots ({slots}) must be a positive multiple of ways ({ways})")
        view = memoryview(cells)
        if view.readonly:
            raise ValueError("cells must be a writable buffer")
        if view.format != "q":
            # A shared memory segment or a bytearray is bytes; numpy's int64 says "l".
            view = view.cast("B").cast("q")
        needed = cells_needed(endpoints, slots)
        if len(view) < needed:  # a segment may be longer: some systems round it up to a page
            raise ValueError(f"cells holds {len(view)} int64, the table needs {needed}")
        self._cells = view
        self.endpoints = endpoints
        self.slots = slots
        self.ways = ways
        self.sets = slots // ways

    cells_needed = staticmethod(cells_needed)

    @classmethod
    def local(cls, endpoints, slots, ways=4):
        """A table in this process's own memory (zeroed: every entry empty)."""
        return cls(bytearray(8 * cells_needed(endpoints, slots)), endpoints, slots, ways)

    def _base(self, endpoint):
        endpoint = index(endpoint)
        if not 0 <= endpoint < self.endpoints:
            raise IndexError(f"endpoint {endpoint} is not in [0, {self.endpoints})")
        return endpoint * self.slots * 2

    def record(self, endpoint, hashes, now):
        """Note that ``hashes`` were sent to ``endpoint`` at time ``now``."""
        base = self._base(endpoint)
        hashes = _checked(hashes)
        now = _time(now)
        cells = self._cells
        width = self.ways * 2
        sets = self.sets
        for h in hashes:
            first = base + (h % sets) * width
            victim = -1  # the entry to replace: the first empty one, else the least recently used
            victim_time = 0
            victim_empty = False
            for i in range(first, first + width, 2):
                held = cells[i]
                if held == h:
                    used = cells[i + 1]
                    if used < now:  # not max(): no store when nothing changes, and never backwards
                        cells[i + 1] = now
                    break
                if victim_empty:
                    continue  # still looking for h further on
                if held == 0:
                    victim = i
                    victim_empty = True
                else:
                    used = cells[i + 1]
                    if victim < 0 or used < victim_time:
                        victim = i
                        victim_time = used
            else:
                cells[victim + 1] = now
                cells[victim] = h  # last: see "Sharing" above

    def match(self, endpoint, hashes, oldest):
        """How many leading ``hashes`` ``endpoint`` holds, each used at ``oldest`` or later."""
        return self._match(self._base(endpoint), _checked(hashes), _time(oldest))

    def matches(self, hashes, oldest):
        """``match`` for every endpoint, as a list indexed by endpoint."""
        hashes = _checked(hashes)
        oldest = _time(oldest)
        step = self.slots * 2
        return [self._match(base, hashes, oldest) for base in range(0, self.endpoints * step, step)]

    def _match(self, base, hashes, oldest):
        cells = self._cells
        width = self.ways * 2
        sets = self.sets
        count = 0
        for h in hashes:
            first = base + (h % sets) * width
            for i in range(first, first + width, 2):
                # Not "the first entry holding h": racing writers may leave h in two entries.
                if cells[i] == h and cells[i + 1] >= oldest:
                    break
            else:
                return count
            count += 1
        return count

    def forget(self, endpoint):
        """Empty ``endpoint``'s entries (it was removed, or its cache was reset)."""
        base = self._base(endpoint)
        cells = self._cells
        for i in range(base, base + self.slots * 2, 2):
            cells[i] = 0  # the hash first: the entry reads as empty before its time goes
            cells[i + 1] = 0
