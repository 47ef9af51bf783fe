"""One endpoint (a backend server) at run time: its connection pool, health, in-flight count.

How this works.
- An Endpoint is built once per distinct endpoint config (``key``) and may outlive a router: a
  reload adopts endpoints whose settings did not change, with their connections, health and
  counts (``Router``).
- In-flight accounting goes through ``acquire``, ``release`` and ``load`` only. Under a
  supervisor the counts live in shared memory (``attach``): this worker writes its own row, and
  ``load`` sums every worker's, so load-aware policies see the whole process group.
- Health events (probes, request outcomes, drains) update the sans-IO ``HealthState``; when
  eligibility changes, every cluster the endpoint belongs to rebuilds its snapshot.
- Load reports from vLLM (``load.Report``: in band or scraped) are kept in this worker's row
  of shared memory too, and read back from whichever worker heard last, so every worker
  balances on the freshest report; ``pressure`` is what the policies compare.
"""

import logging
import time

import msgspec

from ..http.connection_pool import ConnectionPool
from ..observe.metrics import clock, now as arrived
from ..process.shm import AT, DRAINED, EJECTED_UNTIL, EJECTIONS, KV, RUNNING, RUNNING_AT, SOURCE, WAITING
from .health import HealthState, may_eject
from .load import IN_BAND, Report, parse_orca, pressure
from .provider import adapter_for

log = logging.getLogger("fleetproxy.routing")

IN_BAND_EVERY = 0.05  # s: the least age of a load report before an in-band one replaces it
_IN_BAND_EVERY = IN_BAND_EVERY  # a C double where compiled (endpoint.pxd): compared per response unboxed


class Endpoint:
    __slots__ = (
        "spec", "key", "label", "host", "port", "authority", "weight", "pool", "ssl", "server_hostname",
        "health", "health_path", "health_cfg", "outlier", "eligible", "clusters", "in_flight", "peak",
        "requests", "owner", "adapter", "provider", "counters", "index", "cells", "cell", "req_cell",
        "report", "report_at", "report_cell", "max_age", "ask_load", "health_cell",
    )

    def __init__(self, spec, loop, cfg, provider=False):
        self.spec = spec
        self.key = endpoint_key(spec, cfg, provider)
        self.label = spec.label
        self.host = spec.host
        self.port = spec.port
        self.weight = spec.weight
        self.provider = provider
        if spec.tls:
            # Imported here: the data path's compiled modules import one another's types at
            # their start, and http.upstream is still starting when this module is.
            from ..http.upstream import client_context

            self.ssl = client_context(spec.ca_file, spec.verify)
            self.server_hostname = spec.server_name or spec.host
            name = self.server_hostname
            self.authority = _authority(name, None if spec.port == 443 else spec.port)
        else:
            self.ssl = None
            self.server_hostname = None
            self.authority = _authority(spec.host, spec.port)
        self.adapter = adapter_for(spec, provider)
        self.pool = None
        if loop is not None:
            self.pool = ConnectionPool(loop, spec.host, spec.port, cfg, self.ssl, self.server_hostname)
        self.health = HealthState()
        self.health_path = spec.health_path if provider else cfg.health.path
        self.health_cfg = cfg.health
        self.outlier = cfg.outlier
        self.eligible = True
        self.clusters = []
        self.in_flight = 0  # this process's own count
        self.peak = 0
        self.requests = 0
        self.counters = None  # shm.SharedCounters of the worker group, once attached
        self.index = 0
        self.cells = None
        self.cell = 0
        self.req_cell = 0
        self.owner = None  # the router that holds it now
        self.report = None  # load.Report: the freshest load report known here
        self.report_at = 0  # its time in shared memory (microseconds), to spot a newer one
        self.report_cell = -1
        self.health_cell = -1  # drain and ejection, shared with every worker (process/shm.py)
        self.max_age = cfg.load.max_age
        # vLLM endpoints are asked for their load in band; providers are not (a header they
        # do not know, and their load is not ours to balance).
        self.ask_load = cfg.load.in_band and not provider

    # -- in-flight accounting: the only three places that touch the count --

    def acquire(self):
        n = self.in_flight + 1
        self.in_flight = n
        self.requests += 1
        if n > self.peak:
            self.peak = n
        if self.cells is not None:
            # This worker's own row: single writer, so a plain add is safe (see process/shm.py).
            # The view read off self each time: compiled, a local copy of it costs a reference
            # count taken and given back.
            self.cells[self.cell] += 1
            self.cells[self.req_cell] += 1

    def release(self):
        self.in_flight -= 1
        if self.cells is not None:
            self.cells[self.cell] -= 1

    def load(self):
        """Requests in flight on this endpoint across every worker of the group."""
        counters = self.counters
        return self.in_flight if counters is None else counters.in_flight(self.index)

    def attach(self, counters, slot, index):
        """Count in the worker group's shared memory from now on (row ``slot``, column
        ``index``), carrying over what this process already has in flight."""
        self.counters = counters
        self.index = index
        self.cells = counters.cells
        self.cell = counters.in_flight_cell(slot, index)
        self.req_cell = counters.requests_cell(slot, index)
        self.report_cell = counters.report_cell(slot, index)
        self.cells[self.cell] = self.in_flight
        self.health_cell = counters.health_cell(index)
        self.sync_health(time.monotonic())  # a drain or an ejection the group has already

    @property
    def healthy(self):
        return self.health.up

    # -- load as vLLM reports it --

    def observe(self, waiting, running, kv, source, now):
        """A load report (routing/load.py) received ``now`` (monotonic seconds)."""
        running_at = now
        if running is None:
            # vLLM's in-band report has no running count: the last scrape's stays on, with its
            # own time, while it is younger than max_age (the scraper renews it before then).
            # Else the gauge of it would come and go with each kind of report.
            last = self.current_report()
            running_at = None
            if last is not None and last.running_at is not None and now - last.running_at < self.max_age:
                running, running_at = last.running, last.running_at
        self.report = Report(waiting, running, kv, now, source, running_at)
        cells = self.cells
        if cells is not None:
            i = self.report_cell
            cells[i + WAITING] = int(waiting * 1000)
            cells[i + RUNNING] = -1 if running is None else int(running * 1000)
            cells[i + RUNNING_AT] = 0 if running_at is None else int(running_at * 1e6)
            cells[i + KV] = -1 if kv is None else int(kv * 1e6)
            cells[i + SOURCE] = source
            at = int(now * 1e6) or 1
            cells[i + AT] = at  # last: a reader that sees the new time sees the new values
            self.report_at = at

    def observe_in_band(self, value):
        """The ``endpoint-load-metrics`` header of a response (ignored when unreadable). At
        thousands of responses a second, a report this worker took less than IN_BAND_EVERY
        ago is as good as a new one: skip the parse and the shared-memory writes."""
        now = arrived()  # the response's read callback's time (metrics.hold)
        report = self.report
        if report is not None and now - report.at < _IN_BAND_EVERY:
            return
        fields = parse_orca(value)
        if fields is not None:
            self.observe(fields[0], fields[1], fields[2], IN_BAND, now)

    def current_report(self):
        """The freshest report any worker received, or None."""
        counters = self.counters
        if counters is None:
            return self.report
        cell = counters.freshest_report(self.index)
        if cell < 0:
            return None
        at = self.cells[cell + AT]
        if at != self.report_at:  # another worker heard from vLLM since
            self.report = Report(*counters.report_fields(cell))
            self.report_at = at
        return self.report

    def pressure(self, now):
        """(load, queueing) for the balancing policies (see load.pressure)."""
        return pressure(self.current_report(), self.load(), now, self.max_age)

    def queueing(self, now):
        """Whether a fresh report says new requests wait here (``pressure``'s second half,
        without summing the in-flight counts)."""
        return pressure(self.current_report(), 0, now, self.max_age)[1]

    # -- health events --

    def probed(self, ok, now):
        """An active check's result (``prober.check_forever``)."""
        health = self.health
        was_up = health.up
        changed = health.probed(ok, now, self.health_cfg.healthy_threshold, self.health_cfg.unhealthy_threshold)
        if health.up != was_up:
            log.warning("backend %s is %s", self.label, "up" if health.up else "down")
        if changed:
            if ok and health.eligible:
                health.failures = 0
            self._changed()

    def failed(self, now):
        """A real request failed: connect error, reset, timeout."""
        self._ejected(self.health.request_failed(now, self.outlier, self._may_eject))

    def answered(self, status, loop):
        """A response head arrived with ``status`` (502/503/504 count as failures). The
        ``loop``'s time is read only when the answer changes something: the common case stays
        cheap (no bound method made per response either)."""
        health = self.health
        if status < 500 and not health.failures and health.up:
            return
        self._ejected(health.answered(status, loop.time(), self.outlier, self._may_eject))
        if status < 500 and not health.up:
            health.served()
            log.warning("backend %s is up (it answered a request in panic)", self.label)
            self._changed()

    def _ejected(self, seconds):
        if seconds is not None:
            log.warning(
                "backend %s ejected for %.1f s after %d failures in a row",
                self.label, seconds, self.outlier.consecutive_failures,
            )
            if self.health_cell >= 0:
                cells, i = self.cells, self.health_cell
                cells[i + EJECTIONS] = self.health.ejections
                cells[i + EJECTED_UNTIL] = int(self.health.ejected_until * 1e6)
            self._changed()

    def sync_health(self, now):
        """Adopt what other workers decided: a drain, or an ejection that ends later than ours.
        Run every health round (``prober.check_forever``) and on attaching; ``now`` is the
        monotonic clock, which every process shares."""
        i = self.health_cell
        if i < 0:
            return
        cells = self.cells
        drained = cells[i + DRAINED] == 1
        health = self.health
        changed = drained != health.drained
        health.drained = drained
        until = cells[i + EJECTED_UNTIL] / 1e6
        if until > now and (health.ejected_until is None or health.ejected_until < until):
            health.ejected_until = until
            health.ejections = cells[i + EJECTIONS]
            changed = True
        if changed:
            self._changed()

    def _may_eject(self):
        pct = self.outlier.max_ejected_percent
        for cluster in self.clusters:
            ejected = sum(1 for e in cluster.endpoints if e.health.ejected_until is not None)
            if not may_eject(ejected, len(cluster.endpoints), pct):
                return False
        return True

    def set_drained(self, drained):
        if self.health_cell >= 0:
            self.cells[self.health_cell + DRAINED] = int(drained)
        if self.health.drained != drained:
            self.health.drained = drained
            log.warning("backend %s %s", self.label, "drained" if drained else "undrained")
            self._changed()

    def _changed(self):
        self.eligible = self.health.eligible
        for cluster in self.clusters:
            cluster.rebuild()

    def state(self, now=0.0):
        out = {
            "name": self.label,
            "url": self.spec.url,
            "weight": self.weight,
            "healthy": self.health.up,
            "eligible": self.eligible,
            "in_flight": self.in_flight,  # this worker's
            "in_flight_all": self.load(),  # every worker's, from shared memory
            "peak_in_flight": self.peak,
            "requests": self.requests,
            "failures_in_a_row": self.health.failures,
            "health": self.health.state(now),
            "clusters": [c.name for c in self.clusters],
        }
        report = self.current_report()
        if report is not None:
            out["load"] = report.state(time.monotonic())  # the clock reports are stamped with
        if self.provider:
            out["provider"] = True
        if self.pool is not None:
            out["connection_pool"] = self.pool.stats()
        return out


def endpoint_key(spec, cfg, provider):
    """Two configs that give an endpoint the same key may share its runtime object across a
    reload: everything its connections and health depend on is in it."""
    conn = (
        cfg.connection_pool, cfg.timeouts.connect, cfg.timeouts.pool_idle, cfg.limits.high_water,
        cfg.health, cfg.outlier, cfg.load,
    )
    return msgspec.json.encode((provider, spec if not provider else {**msgspec.structs.asdict(spec), "balance": None}, conn))


def _authority(host, port):
    """The Host field's value for ``host`` and ``port`` (None: the scheme's own): an IPv6
    address in brackets (RFC 9110 7.2, RFC 3986 3.2.2), which the bare ``::1:8000`` is not."""
    if ":" in host:
        host = f"[{host}]"
    return (host if port is None else f"{host}:{port}").encode()
