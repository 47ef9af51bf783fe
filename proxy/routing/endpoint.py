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
"""

import logging

import msgspec

from ..http.connection_pool import ConnectionPool
from ..http.upstream import client_context
from .health import HealthState, may_eject
from .provider import adapter_for

log = logging.getLogger("fleetproxy.routing")


class Endpoint:
    __slots__ = (
        "spec", "key", "label", "host", "port", "authority", "weight", "pool", "ssl", "server_hostname",
        "health", "health_path", "health_cfg", "outlier", "eligible", "clusters", "in_flight", "peak",
        "requests", "owner", "adapter", "provider", "counters", "index", "cells", "cell", "req_cell",
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
            self.ssl = client_context(spec.ca_file, spec.verify)
            self.server_hostname = spec.server_name or spec.host
            name = self.server_hostname
            self.authority = (name if spec.port == 443 else f"{name}:{spec.port}").encode()
        else:
            self.ssl = None
            self.server_hostname = None
            self.authority = (f"{spec.host}:{spec.port}").encode()
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

    # -- in-flight accounting: the only three places that touch the count --

    def acquire(self):
        n = self.in_flight + 1
        self.in_flight = n
        self.requests += 1
        if n > self.peak:
            self.peak = n
        cells = self.cells
        if cells is not None:
            # This worker's own row: single writer, so a plain add is safe (see process/shm.py).
            cells[self.cell] += 1
            cells[self.req_cell] += 1

    def release(self):
        self.in_flight -= 1
        cells = self.cells
        if cells is not None:
            cells[self.cell] -= 1

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
        self.cells[self.cell] = self.in_flight

    @property
    def healthy(self):
        return self.health.up

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

    def answered(self, status, clock):
        """A response head arrived with ``status`` (502/503/504 count as failures). ``clock``
        is called only when the answer changes something: the common case stays cheap."""
        health = self.health
        if status < 500 and not health.failures:
            return
        self._ejected(health.answered(status, clock(), self.outlier, self._may_eject))

    def _ejected(self, seconds):
        if seconds is not None:
            log.warning(
                "backend %s ejected for %.1f s after %d failures in a row",
                self.label, seconds, self.outlier.consecutive_failures,
            )
            self._changed()

    def _may_eject(self):
        pct = self.outlier.max_ejected_percent
        for cluster in self.clusters:
            ejected = sum(1 for e in cluster.endpoints if e.health.ejected_until is not None)
            if not may_eject(ejected, len(cluster.endpoints), pct):
                return False
        return True

    def set_drained(self, drained):
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
        cfg.health, cfg.outlier,
    )
    return msgspec.json.encode((provider, spec if not provider else {**msgspec.structs.asdict(spec), "balance": None}, conn))
