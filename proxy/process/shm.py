"""Counters shared by the worker processes of one generation, in one shared-memory segment.

How this works. The segment is a table of int64 cells: one row (slot) per worker, and in each
row one cell per endpoint for its in-flight requests and one per endpoint for requests sent.
A worker writes only its own row, so a plain add on an aligned int64
is safe without locks or atomics (single writer per cell; x86-64 and arm64 load and store
aligned 8-byte words whole). Readers sum a column across rows, so least-request and bounded
loads see the whole process group, not 1/N of it. When a worker dies, the supervisor zeroes its
row before the replacement starts: a dead worker leaves no stale in-flight counts.

Cell 0 is a header the supervisor writes: how many slots are in use (the highest slot + 1),
so a read sums only the rows that can be live. The supervisor creates and finally unlinks the
segment; workers attach by name.
"""

from multiprocessing import resource_tracker, shared_memory

MAX_SLOTS = 256  # rows: the most workers one generation can have at once


class SharedCounters:
    def __init__(self, slots, endpoints, name=None):
        self.slots = slots
        self.endpoints = endpoints
        self.row = 2 * endpoints
        size = (1 + slots * self.row) * 8
        if name is None:
            self.shm = shared_memory.SharedMemory(create=True, size=size)
            self.owner = True
        else:
            self.shm = shared_memory.SharedMemory(name=name)
            # Only the creator may unlink; stop this process's tracker from doing it at exit.
            try:
                resource_tracker.unregister(self.shm._name, "shared_memory")
            except Exception:
                pass
            self.owner = False
        self.cells = self.shm.buf.cast("q")
        if self.owner:
            for i in range(1 + slots * self.row):
                self.cells[i] = 0

    @property
    def name(self):
        return self.shm.name

    # -- layout -------------------------------------------------------------------------

    def in_flight_cell(self, slot, endpoint):
        return 1 + slot * self.row + endpoint

    def requests_cell(self, slot, endpoint):
        return 1 + slot * self.row + self.endpoints + endpoint

    def set_slots_in_use(self, n):
        self.cells[0] = n

    # -- reads (any process) --------------------------------------------------------------

    def in_flight(self, endpoint):
        cells, row = self.cells, self.row
        total = 0
        for i in range(1 + endpoint, 1 + cells[0] * row, row):
            total += cells[i]
        return total

    def requests(self, endpoint):
        cells, row = self.cells, self.row
        return sum(cells[i] for i in range(1 + self.endpoints + endpoint, 1 + cells[0] * row, row))

    # -- writes ---------------------------------------------------------------------------

    def reset_slot(self, slot):
        """Zero a dead worker's row (the supervisor does this before respawning it)."""
        base = 1 + slot * self.row
        for i in range(base, base + self.row):
            self.cells[i] = 0

    def close(self):
        self.cells.release()
        self.shm.close()
        if self.owner:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
