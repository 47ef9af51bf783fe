"""Which column of the workers' shared memory a discovered member uses.

Why this exists. Counters, load reports and the prefix index give every endpoint a column,
the same in every worker (``process/shm.py``). Static endpoints get theirs from the config;
a discovered member appears at run time in each worker separately (each runs its own
discovery loop), so the workers must agree on its column without talking to each other. A
generation reserves ``discovery.max_members`` columns per discovering cluster after the static
ones, and a small claim table in shared memory says which label holds which: two cells per
column, the label's 63-bit hash and when a worker last had it (monotonic microseconds).

- ``claim(label)``: under an exclusive ``flock`` on the table's file (claims are rare: a pod
  joining), the column already holding the label, else the first free one from the label's
  hash on (so a fresh table gives every worker the same answer even in a race it could not
  have); a column is free when nobody has touched it for ``STALE`` seconds and nothing is in
  flight on it. Reusing one first empties it (``reset``): no counts, reports or cached
  prefixes of its former holder leak into the new one.
- ``touch(labels)``: every worker refreshes its members' claims every ``TOUCH`` seconds, so a
  member every worker dropped (or whose last worker died) frees its column after ``STALE``.
Without a supervisor the table is this process's own memory and needs no lock.
"""

import fcntl
import os
import time

from ..process.shm import REPORT_CELLS, key_hash

TOUCH = 5.0  # s between refreshes of a worker's claims
STALE = 30.0  # s without a refresh after which a column may be given to another label


def reserve(cfg):
    """Columns a generation keeps for discovered members, after the static endpoints'."""
    return sum(c.discovery.max_members for c in cfg.all_clusters() if getattr(c, "discovery", None) is not None)


def reset_column(table, counters, column):
    """Empty ``column`` of the prefix index and of every worker's row of the counters. Only for a
    free column (no worker holds its label, nothing in flight), so no worker writes it now."""
    if table is not None:
        table.forget(column)
    if counters is not None:
        cells = counters.cells
        for slot in range(counters.slots):
            cells[counters.in_flight_cell(slot, column)] = 0
            cells[counters.requests_cell(slot, column)] = 0
            first = counters.report_cell(slot, column)
            for i in range(first, first + REPORT_CELLS):
                cells[i] = 0


def now_us():
    return int(time.monotonic() * 1e6) or 1


class Columns:
    """Claims on ``count`` columns starting at ``first``, in ``cells`` (2 x count int64)."""

    def __init__(self, cells, first, count, lock_path=None):
        self.cells = cells
        self.first = first
        self.count = count
        self.lock_path = lock_path
        self.busy = lambda column: False  # set by the router: requests in flight on a column?
        self.reset = lambda column: None  # set by the router: empty a column for a new holder

    @classmethod
    def local(cls, first, count):
        return cls(memoryview(bytearray(16 * max(count, 1))).cast("q"), first, count)

    def claim(self, label):
        """The column for ``label``, or None when every reserved column is taken."""
        if self.count == 0:
            return None
        fd = os.open(self.lock_path, os.O_RDONLY) if self.lock_path else None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            return self._claim(key_hash(label))
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock

    def _claim(self, h):
        cells, count, now = self.cells, self.count, now_us()
        for i in range(count):
            if cells[2 * i] == h:
                cells[2 * i + 1] = now
                return self.first + i
        stale = now - int(STALE * 1e6)
        start = h % count
        for step in range(count):
            i = (start + step) % count
            held, seen = cells[2 * i], cells[2 * i + 1]
            if held == 0 or (seen < stale and not self.busy(self.first + i)):
                if held:
                    self.reset(self.first + i)
                cells[2 * i + 1] = now
                cells[2 * i] = h
                return self.first + i
        return None

    def touch(self, labels):
        cells, now = self.cells, now_us()
        for label in labels:
            h = key_hash(label)
            for i in range(self.count):
                if cells[2 * i] == h:
                    cells[2 * i + 1] = now
                    break

    def state(self):
        taken = sum(1 for i in range(self.count) if self.cells[2 * i])
        return {"reserved": self.count, "claimed": taken}
