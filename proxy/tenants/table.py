"""The tenants' limits in shared memory: one table for the supervisor's whole life, so every
worker spends from the same buckets and a reload (SIGHUP) keeps what was spent.

Layout (int64 cells): a header (with the count of failed Redis calls, ``REDIS_ERRORS``); a *slot* per tenant (its name's hash, the requests bucket's
and the tokens bucket's theoretical arrival times, see ``buckets.py``); a pid per worker row;
then each worker row's count of requests in flight per tenant slot.

Why a lock, and which. Several workers update the same tenant's bucket, and GCRA is a
read-modify-write of one cell (admit or not, then store the new time): two workers admitting
at once would both read the old time and each let a request through that only one should
have. Without a compare-and-swap reachable from pure Python (the pure build must behave the
same), the update runs under an exclusive POSIX record lock on one byte of the segment's file
(``fcntl.lockf`` on ``Segment.path`` in /dev/shm, byte = the tenant's slot), so workers contend only when they serve the same
tenant at the same instant, and the lock is the kernel's: a worker that dies holding it
releases it. Two system calls a request for admission, two at the end.

Requests in flight are counted per worker row instead (single writer per cell, summed on read
under the same lock): when a worker dies, the supervisor zeroes its row and the requests it
held stop counting, which a shared counter could never learn. Tenant slots are claimed by
name under the lock on the byte after the last slot and never freed (``max_tenants`` bounds
them): a tenant removed by a reload keeps its slot until the supervisor restarts.

Without a supervisor the table is this process's own memory and takes no locks.
"""

import fcntl
import os

from ..process.shm import Segment, key_hash

HEADER = 5  # slots, worker rows, layout version, rows in use (the highest claimed row + 1), Redis errors
REDIS_ERRORS = 4  # header cell: Redis calls that failed or timed out, every worker's (a counter)
VERSION = 2
SLOT_CELLS = 4
KEY, REQ_TAT, TOK_TAT = 0, 1, 2  # in a slot


class TenantTable:
    def __init__(self, rows=1, slots=1024, name=None, shared=True):
        if name is None:
            cells = HEADER + slots * SLOT_CELLS + rows + rows * slots
            # Zero-filled either way; a private table (one process) needs no segment at all.
            self.shm = Segment(cells) if shared else None
            self.owner = True
        else:
            self.shm = Segment(0, name)
            self.owner = False
        self.cells = self.shm.cells if self.shm is not None else memoryview(bytearray(cells * 8)).cast("q")
        if self.owner:
            self.cells[0], self.cells[1], self.cells[2] = slots, rows, VERSION
        elif self.cells[2] != VERSION:
            raise RuntimeError("tenants table layout differs between supervisor and worker")
        self.slots, self.rows = self.cells[0], self.cells[1]
        self.pids = HEADER + self.slots * SLOT_CELLS
        self.conc = self.pids + self.rows
        self.fd = os.open(self.shm.path, os.O_RDWR) if self.shm is not None else -1

    @property
    def name(self):
        return self.shm.name if self.shm is not None else None

    def slot_base(self, slot):
        return HEADER + slot * SLOT_CELLS

    def in_flight_cell(self, row, slot):
        return self.conc + row * self.slots + slot

    # -- locks ----------------------------------------------------------------------------

    def lock(self, slot):
        if self.fd >= 0:
            fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, slot)

    def unlock(self, slot):
        if self.fd >= 0:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, slot)

    # -- the supervisor -------------------------------------------------------------------

    def claim_row(self, pid):
        """A free worker row for ``pid``, its counts zeroed, or -1 when all are taken."""
        cells = self.cells
        for row in range(self.rows):
            if cells[self.pids + row] == 0:
                self.clear_row(row)
                cells[self.pids + row] = pid
                if row + 1 > cells[3]:
                    cells[3] = row + 1
                return row
        return -1

    def clear_row(self, row):
        """Zero a worker row's in-flight counts (its process is gone, or about to start)."""
        start = self.in_flight_cell(row, 0)
        self.cells[start:start + self.slots] = memoryview(bytes(self.slots * 8)).cast("q")

    def free_row(self, row):
        self.clear_row(row)
        self.cells[self.pids + row] = 0

    # -- the workers ----------------------------------------------------------------------

    def claim_slot(self, tenant):
        """The slot of the tenant named ``tenant``: the one holding its name, else a free one
        (probing from the name's hash, so workers agree without talking); -1 when full."""
        key = key_hash(tenant)
        cells = self.cells
        self.lock(self.slots)
        try:
            first = key % self.slots
            free = -1
            for i in range(self.slots):
                slot = (first + i) % self.slots
                held = cells[self.slot_base(slot) + KEY]
                if held == key:
                    return slot
                if held == 0:
                    free = slot
                    break
            if free >= 0:
                cells[self.slot_base(free) + KEY] = key
            return free
        finally:
            self.unlock(self.slots)

    def in_flight(self, slot):
        """Requests in flight for ``slot``, summed over worker rows (call under its lock)."""
        cells = self.cells
        at = self.conc + slot
        total = 0
        for i in range(at, at + cells[3] * self.slots, self.slots):
            total += cells[i]
        return total

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.shm is not None:
            self.shm.close()  # the owner's close unlinks it
