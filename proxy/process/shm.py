"""Memory shared by the worker processes of one generation: counters, load reports, and the
prefix index, each a table of int64 cells in a shared-memory segment.

How this works. ``Segment`` is one segment of int64 cells: the supervisor creates it (zeroed)
and finally unlinks it; workers attach by name. ``SharedCounters`` lays out one row (slot) per
worker; in each row, per endpoint: requests in flight, requests sent, and the last load report
this worker received (see ``routing/load.py``). A worker writes only its own row, so a plain
store on an aligned int64 is safe without locks or atomics (single writer per cell; x86-64 and
arm64 load and store aligned 8-byte words whole). Readers sum a column across rows (in-flight
counts: least-request and bounded loads see the whole process group, not 1/N of it) or take
the freshest row (load reports: whichever worker heard from vLLM last). When a worker dies, the
supervisor zeroes its row before the replacement starts: a dead worker leaves no stale counts.

Cell 0 is a header the supervisor writes: how many slots are in use (the highest slot + 1), so
a read looks only at rows that can be live.

The prefix index (``_speedups.PrefixTable``) lives in a segment of its own; it is written by
every worker and tolerates their races by design (see its module).
"""

import mmap
import os

try:  # CPython's own: hashlib would load OpenSSL's libcrypto (~0.5 MiB) into the supervisor for it
    from _blake2 import blake2b
except ImportError:
    from hashlib import blake2b

if os.path.isdir("/dev/shm"):
    SHM_DIR = "/dev/shm"
else:  # no tmpfs there: the temporary directory (tempfile only then, for the supervisor's memory)
    import tempfile

    SHM_DIR = tempfile.gettempdir()
PREFIX = "fleetproxy-"  # then the creating process's pid: see ``sweep``

MAX_SLOTS = 256  # rows: the most workers one generation can have at once

# A load report in a row: six cells per endpoint.
WAITING = 0  # vLLM's num_requests_waiting x 1000
RUNNING = 1  # num_requests_running x 1000, -1: not reported
KV = 2  # KV-cache usage x 1e6, -1: not reported
AT = 3  # monotonic microseconds; 0: no report
SOURCE = 4  # routing.load.IN_BAND or SCRAPED
RUNNING_AT = 5  # monotonic microseconds of the scrape RUNNING came from (in-band reports carry it on)
REPORT_CELLS = 6

# Health every worker must agree on, one set per endpoint (not per row): the operator's drain
# and the passive ejection, so a drain holds in every worker and a respawned worker or a new
# generation (the supervisor copies the set by label) does not forget either.
DRAINED = 0  # 1 while drained through the admin API
EJECTED_UNTIL = 1  # monotonic microseconds the ejection may end; 0: not ejected
EJECTIONS = 2  # ejections in a row (the back-off multiplier)
HEALTH_CELLS = 3


class Segment:
    """``cells`` int64 cells in shared memory, created here (zeroed) or attached by ``name``.

    A file in /dev/shm (tmpfs: memory, never disk) mapped by every process, which is what
    ``shm_open`` does too; but not through ``multiprocessing.shared_memory``, whose resource
    tracker is one more Python process (~13 MiB) kept alive for the proxy's whole life. What
    the tracker would clean up after a SIGKILLed supervisor, ``sweep`` removes at the next start.
    """

    def __init__(self, cells, name=None):
        if name is None:
            sweep()
            name = f"{PREFIX}{os.getpid()}-{os.urandom(6).hex()}"  # secrets.token_hex, without its imports
            fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, max(8, cells * 8))  # reads as zeros
                self.mm = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
            self.owner = True
        else:
            fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
            try:
                self.mm = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
            self.owner = False
        self.name = name
        self.path = os.path.join(SHM_DIR, name)
        self.cells = memoryview(self.mm).cast("q")

    def close(self):
        try:
            self.cells.release()
            self.mm.close()
        except BufferError:
            pass  # a view of it is still alive; the mapping goes with the process
        if self.owner:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def key_hash(name):
    """A name's key in a shared table (a tenant's, an endpoint's label): 63 bits, never 0,
    the same in every process."""
    return (int.from_bytes(blake2b(name.encode(), digest_size=8).digest(), "big") >> 1) or 1


def sweep():
    """Remove segments left by supervisors that no longer run (killed before they unlinked)."""
    try:
        names = [n for n in os.listdir(SHM_DIR) if n.startswith(PREFIX)]
    except OSError:
        return
    for name in names:
        try:
            pid = int(name[len(PREFIX):].split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except OSError:
                pass
        except (ValueError, PermissionError):
            pass  # not ours to judge (another user's process of that pid)


class SharedCounters(Segment):
    def __init__(self, slots, endpoints, name=None):
        self.slots = slots
        self.endpoints = endpoints
        self.row = (2 + REPORT_CELLS) * endpoints
        super().__init__(1 + slots * self.row + endpoints * HEALTH_CELLS, name)
        # The same cells, typed where compiled (shm.pxd): every pick sums a column and looks for
        # the freshest report, and these loops then run as C over the mapping, not as bytecode
        # making an int object per cell.
        self.view = self.cells

    def close(self):
        self.view = None  # compiled: the typed view's hold on the mapping, let go before it closes
        super().close()

    # -- layout -------------------------------------------------------------------------

    def in_flight_cell(self, slot, endpoint):
        return 1 + slot * self.row + endpoint

    def requests_cell(self, slot, endpoint):
        return 1 + slot * self.row + self.endpoints + endpoint

    def report_cell(self, slot, endpoint):
        """The first of the endpoint's REPORT_CELLS in ``slot``'s row."""
        return 1 + slot * self.row + 2 * self.endpoints + endpoint * REPORT_CELLS

    def health_cell(self, endpoint):
        """The first of the endpoint's HEALTH_CELLS, shared by every row."""
        return 1 + self.slots * self.row + endpoint * HEALTH_CELLS

    def set_slots_in_use(self, n):
        self.cells[0] = n

    def copy_health(self, old, old_labels, new_labels):
        """Carry drains and ejections over from the previous generation, by endpoint label."""
        where = {label: i for i, label in enumerate(old_labels)}
        for i, label in enumerate(new_labels):
            j = where.get(label)
            if j is not None:
                src, dst = old.health_cell(j), self.health_cell(i)
                for k in range(HEALTH_CELLS):
                    self.cells[dst + k] = old.cells[src + k]

    # -- reads (any process) --------------------------------------------------------------

    def in_flight(self, endpoint):
        view, row = self.view, self.row
        total = 0
        i = 1 + endpoint
        end = 1 + view[0] * row
        while i < end:
            total += view[i]
            i += row
        return total

    def requests(self, endpoint):
        cells, row = self.cells, self.row
        return sum(cells[i] for i in range(1 + self.endpoints + endpoint, 1 + cells[0] * row, row))

    def freshest_report(self, endpoint):
        """The cell index of the newest load report on ``endpoint`` over all rows, or -1."""
        view, row = self.view, self.row
        best, best_at = -1, 0
        i = 1 + 2 * self.endpoints + endpoint * REPORT_CELLS
        end = 1 + view[0] * row
        while i < end:
            at = view[i + AT]
            if at > best_at:
                best, best_at = i, at
            i += row
        return best

    def report_fields(self, cell):
        """(waiting, running or None, kv or None, at in seconds, source, running's time in
        seconds or None) of the report at ``cell`` (as ``freshest_report`` found it)."""
        cells = self.cells
        running, kv = cells[cell + RUNNING], cells[cell + KV]
        return (
            cells[cell + WAITING] / 1000, None if running < 0 else running / 1000,
            None if kv < 0 else kv / 1e6, cells[cell + AT] / 1e6, cells[cell + SOURCE],
            cells[cell + RUNNING_AT] / 1e6 if running >= 0 else None,
        )

    # -- writes ---------------------------------------------------------------------------

    def reset_slot(self, slot):
        """Zero a dead worker's row (the supervisor does this before respawning it)."""
        base = 1 + slot * self.row
        for i in range(base, base + self.row):
            self.cells[i] = 0
