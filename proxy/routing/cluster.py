"""A cluster: the endpoints that serve a set of models, the policy that picks among them, and
the immutable snapshot of those that may take traffic now.

A cluster is a ``pools:`` entry of the config (or the default one made of the top-level
``backends:``), or one external provider. Its policy picks from ``snapshot``, which health
changes replace whole (``rebuild``); a pick reads one reference and takes no lock.

Consistent hashing needs a key: the first of the configured sources the request has, in
order (a header, the body's ``user``, the prompt's opening). Body fields are decoded at most
once per request, by the ``Selection`` that carries the request through routing.
"""

import logging

from .cache_aware import CacheAware
from .fields import prompt_prefix
from .policies import ConsistentHash, LeastRequest, RoundRobin, Snapshot, hash_bytes, least_request, ring_points

HEADER, USER, PREFIX = 0, 1, 2  # key sources

log = logging.getLogger("fleetproxy.routing")


class Cluster:
    __slots__ = (
        "name", "models", "endpoints", "policy", "hashed", "cached", "keys", "limit", "vnodes", "snapshot", "fallback",
        "points", "provider", "choose", "panic",
    )

    def __init__(self, name, models, endpoints, balance, fallback=(), provider=False, table=None, ttl=600.0):
        self.name = name
        self.provider = provider
        self.models = list(models)
        self.endpoints = list(endpoints)
        self.fallback = list(fallback)
        self.limit = balance.max_in_flight
        self.vnodes = balance.vnodes
        self.hashed = balance.policy == "consistent_hash"
        self.cached = balance.policy == "cache_aware"
        if balance.policy == "round_robin":
            self.policy = RoundRobin()
        elif self.hashed:
            self.policy = ConsistentHash(balance.load_factor, balance.spill_floor)
        elif self.cached:
            self.policy = CacheAware(
                table, balance.block_chars, balance.index_depth, ttl, balance.load_factor, balance.spill_floor,
                balance.spread,
            )
        else:
            self.policy = LeastRequest()
        # The call a keyless pick makes: (snapshot, exclude, limit) -> member or None.
        self.choose = self.policy.pick if balance.policy == "round_robin" else least_request
        keys = []
        if self.hashed:
            for source in balance.hash_keys:
                if source == "user":
                    keys.append((USER, None))
                elif source == "prefix":
                    keys.append((PREFIX, balance.prefix_chars))
                else:
                    keys.append((HEADER, source[7:].strip().lower().encode()))
        self.keys = tuple(keys)
        self.points = {}
        for endpoint in self.endpoints:
            endpoint.clusters.append(self)
        self.panic = None
        self.rebuild()

    @property
    def needs_fields(self):
        return self.cached or any(kind != HEADER for kind, _ in self.keys)

    def _points_of(self, endpoint):
        points = self.points.get(endpoint.label)
        if points is None:
            points = self.points[endpoint.label] = ring_points(endpoint.label, endpoint.weight, self.vnodes)
        return points

    def rebuild(self):
        eligible = [e for e in self.endpoints if e.eligible]
        self.snapshot = Snapshot(eligible, self.vnodes, self._points_of)
        # Panic (Envoy's word): with no endpoint eligible, health checks and ejections are
        # not trusted over the fleet. The router routes over every endpoint the operator did
        # not drain rather than answer 503 to all: a flapping check must not turn a working
        # fleet into a 503 wall, and a backend that is back serves the moment it answers.
        panic = None
        if not eligible:
            members = [e for e in self.endpoints if not e.health.drained]
            if members:
                panic = Snapshot(members, self.vnodes, self._points_of)
        if (panic is None) != (self.panic is None):
            if panic is not None:
                log.warning("cluster %s: no healthy backend; routing to all %d (panic)", self.name, len(panic))
            elif eligible:
                log.warning("cluster %s: out of panic, %d healthy backends", self.name, len(eligible))
        self.panic = panic

    # Membership changes (discovery, see Router.set_members); the caller rebuilds once after.

    def join(self, endpoint):
        self.endpoints.append(endpoint)
        endpoint.clusters.append(self)

    def leave(self, endpoint):
        self.endpoints.remove(endpoint)
        endpoint.clusters.remove(self)
        self.points.pop(endpoint.label, None)

    def key_hash(self, selection):
        """The hash of the first key source the request has, or None."""
        for kind, arg in self.keys:
            if kind == HEADER:
                for name, value in selection.headers:
                    if name == arg and value:
                        return hash_bytes(value)
            else:
                fields = selection.fields()
                if not fields:
                    continue
                if kind == USER:
                    if fields.user:
                        return hash_bytes(fields.user.encode())
                else:
                    prefix = prompt_prefix(fields, arg)
                    if prefix:
                        return hash_bytes(prefix)
        return None

    def pick(self, selection, exclude, now, snapshot=None):
        """An eligible endpoint with room for the request, or None. ``snapshot``: pick from
        another set than the eligible one (``panic``)."""
        snap = self.snapshot if snapshot is None else snapshot
        if self.cached:
            policy = self.policy
            return policy.pick(snap, selection.blocks(policy), exclude, self.limit, now)
        if self.hashed:
            h = self.key_hash(selection)
            if h is not None:
                ring = self.policy
                return ring.pick(snap, h, exclude, self.limit, now)
        return self.choose(snap, exclude, self.limit)  # no key: least request

    def state(self):
        return {
            "name": self.name,
            "models": self.models,
            "policy": type(self.policy).__name__,
            "fallback": self.fallback,
            "endpoints": [e.label for e in self.endpoints],
            "eligible": [e.label for e in self.snapshot.members],
            "panic": self.panic is not None,
            "max_in_flight": self.limit,
            "snapshot": self.snapshot.stats(),
            **({"decisions": dict(self.policy.decisions)} if self.cached else {}),
        }
