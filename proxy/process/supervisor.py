"""The supervisor: starts N worker processes, converges on a target count, respawns, reloads,
drains. It never touches a request.

How this works.
- Listening sockets belong to the supervisor. Where the kernel has SO_REUSEPORT there is one
  socket per worker slot, all bound to the same address, so the kernel spreads connections
  over the workers; a worker inherits its slot's socket. Because the supervisor keeps every
  socket open, a worker that is replaced (crash, reload) hands its accept queue to its
  successor instead of dropping it. Without SO_REUSEPORT one socket is shared by all workers.
- Signal handlers only enqueue; ``run`` dispatches ``handle_<signal>`` one at a time.
  TERM/INT drain (a second one exits at once), HUP reloads, TTIN/TTOU add or remove a worker.
- A generation is one config and its shared-memory counters (``shm.SharedCounters``). A reload
  starts a whole new generation on the same sockets, waits until every new worker is ready,
  then drains the old ones: no refused connection, no failed request. A config that does not
  load, or workers that do not boot, leave the old generation serving.
- A worker that dies unexpectedly is logged with its cause, its counter row is zeroed, and it
  is respawned after a back-off that doubles while it keeps dying young. A worker that fails
  to boot at startup stops the supervisor instead of looping.
- The admin listener is served here, once, for all workers: it answers from the shared
  counters and fans other admin requests out to each worker's private admin port.
- Neither the router nor the connections nor ssl are imported here: this process's memory is
  all idle overhead. A generation's columns come from the config (``routing/labels.py``), not
  from a Router, and ``cli.py`` imports asyncio without ssl for it
  (``tests/test_supervisor_lean.py``).
"""

import asyncio
import logging
import os
import signal
import socket
import sys
import time

import msgspec
import orjson

from _speedups import PrefixTable

from . import supervisor_admin
from ..config import ConfigError
from ..observe.exposition import Totals
from ..observe.table import R_PID, MetricsTable
from ..discovery.columns import reserve
from ..routing.labels import endpoint_labels
from ..tenants.table import TenantTable
from .shm import MAX_SLOTS, Segment, SharedCounters

log = logging.getLogger("fleetproxy.supervisor")

BOOT_TIMEOUT = 30.0  # s for a new worker to report ready
YOUNG = 5.0  # s: a worker dying younger than this counts towards crash-loop back-off
MAX_BACKOFF = 10.0  # s


def usable_cpus(quota_file="/sys/fs/cgroup/cpu.max"):
    """CPUs this process may use: its affinity, capped by the cgroup v2 CPU quota (a container's
    CPU limit: Kubernetes sets the quota, not the affinity), rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        with open(quota_file) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota readable: no limit
    return cpus


def worker_count(cfg):
    return min(usable_cpus(), MAX_SLOTS) if cfg.workers == "auto" else cfg.workers


class Generation:
    """One config and the memory its workers share: counters, load reports, the prefix index."""

    def __init__(self, number, cfg):
        self.number = number
        self.cfg = cfg
        # One column per distinct endpoint, in the order every worker's router lists them.
        self.labels = endpoint_labels(cfg)
        self.static = len(self.labels)
        self.columns = self.static + reserve(cfg)  # then the columns discovered members claim
        self.claims = Segment(2 * (self.columns - self.static)) if self.columns > self.static else None
        self.counters = SharedCounters(MAX_SLOTS, self.columns)
        self.index = Segment(PrefixTable.cells_needed(self.columns, cfg.prefix_index.blocks_per_endpoint))
        self.workers = set()
        self.respawning = set()  # slots of dead workers waiting for their replacement

    def close(self):
        self.counters.close()
        self.index.close()
        if self.claims is not None:
            self.claims.close()


class Worker:
    __slots__ = ("slot", "generation", "proc", "started", "ready", "admin_port", "draining", "exited", "row", "trow")

    def __init__(self, slot, generation, proc):
        self.slot = slot
        self.generation = generation
        self.proc = proc
        self.started = time.monotonic()
        self.ready = False
        self.admin_port = 0
        self.draining = False
        self.exited = asyncio.get_running_loop().create_future()
        self.row = -1  # its row of the request metrics table
        self.trow = -1  # its row of the tenants table (requests in flight per tenant)

    @property
    def pid(self):
        return self.proc.pid

    def signal(self, sig):
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass


class Supervisor:
    def __init__(self, cfg, reload_config):
        self.reload_config = reload_config  # () -> Config, raises ConfigError
        self.cfg = cfg
        self.target = worker_count(cfg)
        self.generation = None
        self.old_generations = []
        self.sockets = {}  # slot -> listening socket (or slot 0 only without SO_REUSEPORT)
        self.reuseport = hasattr(socket, "SO_REUSEPORT")
        self.signals = asyncio.Queue()
        self.stopping = False
        self.fails = {}  # slot -> consecutive young deaths
        self.restarts = 0  # workers respawned after dying (fleetproxy_worker_restarts_total)
        # Request metrics: one table for the supervisor's whole life, across generations, and
        # the counts of workers that have exited (observe/table.py, observe/exposition.py).
        self.metrics = None
        self.totals = Totals()
        # Tenants' limits (proxy/tenants/table.py): one table for the supervisor's life too,
        # made when a config first has a tenants: section, so buckets outlive reloads.
        self.tenants = None
        self.loop = None

    # -- main loop ----------------------------------------------------------------------------

    async def run(self):
        self.loop = asyncio.get_running_loop()
        if not self.reuseport:
            log.warning("SO_REUSEPORT is not available: all workers share one listening socket")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            self.loop.add_signal_handler(sig, self.signals.put_nowait, sig)
        if self.cfg.observe.metrics:
            rows = min(2 * MAX_SLOTS, max(self.cfg.observe.max_worker_rows, 2 * self.target + 2))
            self.metrics = MetricsTable(rows, self.cfg.observe.max_series)
        self._tenants_table(self.cfg)
        self.generation = Generation(1, self.cfg)
        self.generation.counters.set_slots_in_use(self.target)
        # The admin address is bound (not yet listening: connections are refused until the
        # workers are up) before any worker exists, so that no worker's own admin listener, on
        # an ephemeral port, can take it.
        admin_sock = _bound("admin_listen", *self.cfg.admin_address)
        booted = await asyncio.gather(*(self.spawn(slot, self.generation) for slot in range(self.target)))
        if not all(booted):
            log.error("a worker failed to boot; stopping")
            admin_sock.close()
            await self.stop(drain=False)
            return 1
        admin_server = await supervisor_admin.start(self, admin_sock)
        host, port = self.cfg.listen_address
        log.info(
            "fleetproxy supervisor %d: %d worker(s) on http://%s:%d (admin %s)",
            os.getpid(), self.target, host, port, self.cfg.admin_listen,
        )
        while not self.stopping:
            sig = await self.signals.get()
            await getattr(self, "handle_" + signal.Signals(sig).name[3:].lower())()
        admin_server.close()
        return 0

    async def handle_term(self):
        log.info("SIGTERM: draining %d worker(s)", len(self.all_workers()))
        await self.stop(drain=True)

    handle_int = handle_term

    async def handle_hup(self):
        await self.reload()

    async def handle_ttin(self):
        await self.scale(self.target + 1)

    async def handle_ttou(self):
        await self.scale(self.target - 1)

    # -- workers ------------------------------------------------------------------------------

    def all_workers(self):
        out = set(self.generation.workers)
        for gen in self.old_generations:
            out |= gen.workers
        return out

    def live_workers(self):
        return sorted((w for w in self.generation.workers if not w.draining), key=lambda w: w.slot)

    def listen_socket(self, slot):
        key = slot if self.reuseport else 0
        sock = self.sockets.get(key)
        if sock is None:
            sock = _bound("listen", *self.cfg.listen_address, reuseport=self.reuseport)
            sock.listen(4096)  # non-inheritable: only the worker it is passed to gets it
            self.sockets[key] = sock
        return sock

    async def spawn(self, slot, generation):
        """Start a worker for ``slot`` and wait until it serves; False if it did not boot."""
        generation.counters.reset_slot(slot)
        sock = self.listen_socket(slot)
        row = self.metrics.claim_row(-1) if self.metrics is not None else -1
        trow = self.tenants.claim_row(-1) if self.tenants is not None else -1
        if row < 0 and self.metrics is not None:
            log.warning("worker %d: every row of the metrics table is taken (observe.max_worker_rows): "
                        "its requests go uncounted", slot)
        env = dict(os.environ)
        env["FLEETPROXY_WORKER"] = orjson.dumps(
            {
                "config": msgspec.to_builtins(generation.cfg),
                "slot": slot,
                "generation": generation.number,
                "shm": generation.counters.name,
                "index": generation.index.name,
                "columns": generation.columns,
                "static": generation.static,
                "claims": generation.claims.name if generation.claims is not None else None,
                "fd": sock.fileno(),
                "metrics": self.metrics.name if self.metrics is not None and row >= 0 else None,
                "metrics_row": row,
                "tenants": self.tenants.name if self.tenants is not None and trow >= 0 else None,
                "tenants_row": trow,
            }
        ).decode()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.process.worker",
            stdout=asyncio.subprocess.PIPE, pass_fds=(sock.fileno(),), env=env,
        )
        worker = Worker(slot, generation, proc)
        worker.row = row
        worker.trow = trow
        if row >= 0:
            self.metrics.cells[self.metrics.row_base(row) + R_PID] = proc.pid
        generation.workers.add(worker)
        self.loop.create_task(self._watch(worker))
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), BOOT_TIMEOUT)
        except TimeoutError:
            line = b""
        if not line.startswith(b"READY "):
            worker.signal(signal.SIGKILL)
            await worker.exited
            return False
        worker.admin_port = int(line.split()[1])
        worker.ready = True
        log.info("worker %d (pid %d, generation %d) ready", slot, worker.pid, generation.number)
        return True

    async def _watch(self, worker):
        code = await worker.proc.wait()
        generation = worker.generation
        generation.workers.discard(worker)
        generation.counters.reset_slot(worker.slot)  # a dead worker leaves no stale counts
        if worker.row >= 0 and self.metrics is not None:
            self.totals.fold(self.metrics, worker.row)  # its counts outlive it
        if worker.trow >= 0:
            self.tenants.free_row(worker.trow)  # the requests it held in flight stop counting
        worker.exited.set_result(code)
        if worker.draining or self.stopping:
            log.info("worker %d (pid %d) finished draining (%s)", worker.slot, worker.pid, _cause(code))
            self._retire(generation)
            return
        if not worker.ready:
            log.error("worker %d (pid %d) failed to boot (%s)", worker.slot, worker.pid, _cause(code))
            return
        log.error("worker %d (pid %d) died (%s); respawning", worker.slot, worker.pid, _cause(code))
        self.restarts += 1
        young = time.monotonic() - worker.started < YOUNG
        fails = self.fails.get(worker.slot, 0) + 1 if young else 0
        self.fails[worker.slot] = fails
        delay = min(MAX_BACKOFF, 0.1 * 2 ** max(0, fails - 1)) if fails else 0.0
        # The slot stays reserved while it waits, so a scale-up cannot take it meanwhile.
        generation.respawning.add(worker.slot)
        try:
            while not self.stopping and generation is self.generation and len(self.live_workers()) < self.target:
                if delay:
                    if fails > 1:
                        log.warning("worker %d is crash-looping: respawn in %.1f s", worker.slot, delay)
                    await asyncio.sleep(delay)
                if self.stopping or generation is not self.generation:
                    return
                if await self.spawn(worker.slot, generation):
                    return
                delay = min(MAX_BACKOFF, max(0.1, delay * 2))
        finally:
            generation.respawning.discard(worker.slot)

    def _retire(self, generation):
        if generation is not self.generation and not generation.workers:
            if generation in self.old_generations:
                self.old_generations.remove(generation)
            generation.close()

    async def drain(self, workers):
        for worker in workers:
            worker.draining = True
            worker.signal(signal.SIGTERM)

    async def scale(self, target):
        target = max(1, min(MAX_SLOTS, target))
        if target == self.target:
            return
        log.info("scaling from %d to %d worker(s)", self.target, target)
        self.target = target
        generation = self.generation
        live = self.live_workers()
        if target > len(live):
            # A draining worker still writes its row until it exits: new workers take slots
            # nobody holds, never a draining worker's (its in-flight counts would mix in).
            slots = self.free_slots(generation, target - len(live))
            if not slots:
                log.error("no free worker slot (at most %d, draining ones included)", MAX_SLOTS)
                return
            held = [w.slot for w in generation.workers] + list(generation.respawning)
            generation.counters.set_slots_in_use(max(slots + held) + 1)
            await asyncio.gather(*(self.spawn(slot, generation) for slot in slots))
        else:
            retiring = live[target:]
            await self.drain(retiring)
            for worker in retiring:
                sock = self.sockets.pop(worker.slot, None) if self.reuseport else None
                if sock is not None:
                    sock.close()

    def free_slots(self, generation, n):
        """The ``n`` lowest slots no worker of ``generation`` holds (live, draining or being
        respawned), fewer when MAX_SLOTS runs out."""
        held = {w.slot for w in generation.workers} | generation.respawning
        return [slot for slot in range(MAX_SLOTS) if slot not in held][:n]

    async def reload(self):
        try:
            cfg = self.reload_config()
        except ConfigError as exc:
            log.error("reload rejected, old workers keep serving: %s", exc)
            return
        if cfg.listen != self.cfg.listen or cfg.admin_listen != self.cfg.admin_listen:
            log.warning("reload: listen addresses cannot change without a restart; keeping the old ones")
            cfg = msgspec.structs.replace(cfg, listen=self.cfg.listen, admin_listen=self.cfg.admin_listen)
        target = worker_count(cfg)
        old = self.generation
        try:
            self._tenants_table(cfg)
            new = Generation(old.number + 1, cfg)
        except Exception as exc:  # shared memory: whatever the config check cannot know
            log.error("reload rejected, old workers keep serving: %s", exc)
            return
        new.counters.set_slots_in_use(target)
        new.counters.copy_health(old.counters, old.labels, new.labels)  # drains and ejections stay
        log.info("SIGHUP: starting generation %d with %d worker(s)", new.number, target)
        booted = await asyncio.gather(*(self.spawn(slot, new) for slot in range(target)))
        if not all(booted):
            log.error("reload rejected: new workers failed to boot; old workers keep serving")
            for worker in list(new.workers):
                worker.signal(signal.SIGKILL)
            await asyncio.gather(*(w.exited for w in list(new.workers)))
            new.close()
            return
        old_target = self.target
        self.generation, self.cfg, self.target = new, cfg, target
        self.old_generations.append(old)
        await self.drain(list(old.workers))
        for slot in range(target, old_target):
            sock = self.sockets.pop(slot, None) if self.reuseport else None
            if sock is not None:
                sock.close()

    async def stop(self, drain):
        self.stopping = True
        workers = self.all_workers()
        for worker in workers:
            worker.draining = True
            worker.signal(signal.SIGTERM if drain else signal.SIGKILL)
        # Our copies of the listening sockets go now; once the workers close theirs, new
        # connections are refused (load balancers fail over) instead of queueing unserved.
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        waiting = asyncio.gather(*(w.exited for w in workers))
        second = self.loop.create_task(self.signals.get())
        done, _ = await asyncio.wait(
            {waiting, second}, timeout=self.cfg.drain_timeout + 5, return_when=asyncio.FIRST_COMPLETED
        )
        if waiting not in done:
            log.warning("second signal or drain timeout: killing workers")
            for worker in workers:
                worker.signal(signal.SIGKILL)
            await waiting
        second.cancel()
        for gen in [self.generation, *self.old_generations]:
            gen.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.tenants is not None:
            self.tenants.close()

    def _tenants_table(self, cfg):
        if cfg.tenants is not None and self.tenants is None:
            rows = min(2 * MAX_SLOTS, max(cfg.observe.max_worker_rows, 2 * worker_count(cfg) + 2))
            self.tenants = TenantTable(rows, cfg.tenants.max_tenants)


def _cause(code):
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def run(cfg, reload_config):
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    # The stdlib loop on purpose: its subprocesses close every fd but pass_fds (subprocess.Popen
    # semantics), so each worker holds only its own listening socket. The supervisor is not
    # on the data path; it does not need uvloop.
    return asyncio.run(Supervisor(cfg, reload_config).run())


def _bound(field, host, port, reuseport=False):
    """A TCP socket bound to the configured ``field``'s address; a bind that fails names it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"{field} {host}:{port}: {exc.strerror}") from None
    return sock
