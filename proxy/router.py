"""Which backend serves a request: model -> route (a pool and its fallback chain) -> backend.

How this works.
- Config becomes runtime objects once per start or reload (``build_router``): one ``Backend``
  per distinct backend (its connection pool, health state and in-flight count), one ``Group``
  per pool or provider (its policy and its current ``balancer.Snapshot``), one ``Route`` per
  model (the pool that serves it, then its fallback chain, in order).
- ``Router.pick(exchange)`` chooses the route, then the first group of the route that has an
  eligible backend with room, and counts the request in flight on that backend
  (``Backend.acquire``). ``relay.Exchange.finish`` releases it (``Backend.release``) on every
  exit path, on the backend object it acquired, so a router swapped by a reload keeps its
  in-flight exchanges exact. ``Router.repick`` chooses the next backend for a retry, skipping
  those already tried.
- Body fields are read only when something needs them: the model when pools are keyed by
  model, ``user`` and the prompt prefix when a consistent-hash pool keys on them and no
  earlier key source (a header) answered. One msgspec decode per request, declaring just those
  fields; the body itself is forwarded untouched.
- Health changes (probes, ejections, drains) rebuild the snapshots of the groups a backend is
  in; a lookup reads one reference.

In-flight accounting goes through ``Backend.acquire()``, ``Backend.release()`` and
``Backend.load()`` only, so it can move to memory shared by worker processes.
"""

import logging
import os
from typing import Optional, Union

import msgspec
import orjson

from .balancer import (
    ConsistentHash, LeastRequest, RetryBudget, RoundRobin, Snapshot, hash_bytes, least_request, ring_points,
)
from .errors import ClientError, NoBackend
from .health import HealthState
from .pool import Pool
from .upstream import client_context

log = logging.getLogger("fleetproxy.router")


# -- the body fields routing reads ------------------------------------------------------------


class _Part(msgspec.Struct):
    text: Optional[str] = None  # {"type": "text", "text": ...}; other part types carry none


class _Message(msgspec.Struct):
    role: Optional[str] = None
    content: Union[str, list[_Part], None] = None


class RoutingFields(msgspec.Struct):
    """What routing may read from a JSON body; msgspec skips every other field unbuilt."""

    model: Optional[str] = None
    user: Optional[str] = None
    messages: Optional[list[_Message]] = None
    prompt: msgspec.Raw = msgspec.Raw()  # str, list of str or token ids: kept raw


class _ModelOnly(msgspec.Struct):
    model: Optional[str] = None
    user = None  # read as absent if a pool ever asks
    messages = None
    prompt = b""


_decode_fields = msgspec.json.Decoder(RoutingFields).decode
_decode_model = msgspec.json.Decoder(_ModelOnly).decode
_decode_str = msgspec.json.Decoder(str).decode


def routing_fields(exchange, model_only=False):
    """The exchange's RoutingFields, decoded at most once; False when the body has none.
    ``model_only`` (no pool keys on user or prefix) skips building the messages: a 20 KB
    chat body then costs about 4 us instead of 6."""
    fields = exchange.fields
    if fields is None:
        fields = False
        body = exchange.body
        if body:
            try:
                fields = _decode_model(body) if model_only else _decode_fields(body)
            except msgspec.DecodeError:
                try:  # odd types in fields routing does not need must not hide the model
                    fields = RoutingFields(model=_decode_model(body).model)
                except msgspec.DecodeError:
                    fields = False
        exchange.fields = fields
    return fields


def prompt_prefix(fields, size):
    """The cache-affinity key: the first ``size`` characters of the prompt, as bytes.

    Chat: the message contents joined by a record separator, up to the end of the first user
    message: a conversation's opening (system prompt and first question), which every later
    turn repeats, so all turns of one conversation share the key while a longer prefix would
    change it from turn to turn. Completions: the prompt (token-id lists as raw JSON)."""
    messages = fields.messages
    if messages:
        parts = []
        n = 0
        for message in messages:
            content = message.content
            if content is None:
                continue
            if type(content) is str:
                parts.append(content)
                n += len(content)
            else:
                for part in content:
                    if part.text:
                        parts.append(part.text)
                        n += len(part.text)
            if n >= size or message.role == "user":
                break
        if not parts:
            return None
        return "\x1e".join(parts)[:size].encode()
    raw = fields.prompt
    if raw:
        raw = bytes(raw)
        if raw[:1] == b'"':
            try:
                return _decode_str(raw)[:size].encode()
            except msgspec.DecodeError:
                return None
        if raw != b"null":
            return raw[: size * 4]
    return None


# -- backends ---------------------------------------------------------------------------------


class Backend:
    """Runtime state of one backend: connection pool, health, in-flight count.

    ``acquire``/``release``/``load`` are the whole in-flight interface (see the module doc).
    ``healthy`` is the active checks' verdict; ``eligible`` says whether it takes new requests
    (healthy, not ejected, not drained).
    """

    __slots__ = (
        "spec", "key", "label", "host", "port", "authority", "base_path", "weight", "pool", "ssl",
        "server_hostname", "health", "health_path", "health_cfg", "outlier", "eligible", "groups",
        "in_flight", "peak", "requests", "failures", "owner", "adapted", "extra", "model", "v1_base",
        "provider", "counters", "index", "cells", "cell", "req_cell",
    )

    def __init__(self, spec, loop, cfg, provider=False):
        self.spec = spec
        self.key = _backend_key(spec, cfg, provider)
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
        self.base_path = spec.base_path.encode()
        self.pool = Pool(loop, spec.host, spec.port, cfg, self.ssl, self.server_hostname) if loop is not None else None
        self.health = HealthState()
        self.health_path = spec.health_path if provider else cfg.health.path
        self.health_cfg = cfg.health
        self.outlier = cfg.outlier
        self.eligible = True
        self.groups = []
        self.in_flight = 0  # this process's own count
        self.peak = 0
        self.requests = 0
        self.counters = None  # shm.SharedCounters of the worker group, once attached
        self.index = 0
        self.cells = None
        self.cell = 0
        self.req_cell = 0
        self.failures = 0  # real requests failed in a row (outlier detection)
        self.owner = None
        # An external provider's requests are adapted: path under its base, API key, model name.
        self.adapted = provider
        self.extra = ()
        self.model = None
        self.v1_base = False
        if provider:
            self.v1_base = self.base_path.endswith(b"/v1")
            if spec.model:
                self.model = spec.model
            if spec.api_key_env:
                key = os.environ.get(spec.api_key_env, "")
                if key:
                    self.extra = ((b"authorization", b"Bearer " + key.encode()),)
                else:
                    log.warning("provider %s: environment variable %s is empty; no API key sent", self.label, spec.api_key_env)

    # -- in-flight accounting: the only three places that touch the count --

    def acquire(self):
        n = self.in_flight + 1
        self.in_flight = n
        self.requests += 1
        if n > self.peak:
            self.peak = n
        cells = self.cells
        if cells is not None:
            # This worker's own row: single writer, so a plain add is safe (see proxy/shm.py).
            cells[self.cell] += 1
            cells[self.req_cell] += 1

    def release(self):
        self.in_flight -= 1
        cells = self.cells
        if cells is not None:
            cells[self.cell] -= 1

    def load(self):
        """Requests in flight on this backend across every worker of the group."""
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
        """An active check's result (``health.check_forever``)."""
        health = self.health
        was_up = health.up
        changed = health.probed(ok, now, self.health_cfg.healthy_threshold, self.health_cfg.unhealthy_threshold)
        if health.up != was_up:
            log.warning("backend %s is %s", self.label, "up" if health.up else "down")
        if changed:
            if ok and health.ejected_until is None and not health.drained and health.up:
                self.failures = 0
            self._changed()

    def failed(self, now):
        """A real request failed (connect error, reset, timeout, 502/503/504)."""
        failures = self.failures + 1
        self.failures = failures
        outlier = self.outlier
        limit = outlier.consecutive_failures
        if limit and failures >= limit and self.health.ejected_until is None and self._may_eject():
            seconds = self.health.eject(now, outlier.base_ejection, outlier.max_ejection)
            self.failures = 0
            log.warning("backend %s ejected for %.1f s after %d failures in a row", self.label, seconds, failures)
            self._changed()

    def _may_eject(self):
        pct = self.outlier.max_ejected_percent
        for group in self.groups:
            ejected = sum(1 for b in group.backends if b.health.ejected_until is not None)
            if ejected + 1 > len(group.backends) * pct // 100:
                return False
        return True

    def set_drained(self, drained):
        if self.health.drained != drained:
            self.health.drained = drained
            log.warning("backend %s %s", self.label, "drained" if drained else "undrained")
            self._changed()

    def _changed(self):
        self.eligible = self.health.eligible
        for group in self.groups:
            group.rebuild()

    # -- request adaptation for external providers --

    def adapt(self, target, headers, body):
        """Target, headers and body as the provider wants them: its base path standing for the
        client's /v1, our API key instead of the client's, its model name."""
        if self.v1_base and (target.startswith(b"/v1/") or target == b"/v1"):
            target = self.base_path[:-3] + target
        elif self.base_path:
            target = self.base_path + target
        if self.extra:
            headers = [h for h in headers if h[0] != b"authorization"]
        if self.model is not None and body:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict) and "model" in doc:
                doc["model"] = self.model
                body = orjson.dumps(doc)
        return target, headers, body

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
            "failures_in_a_row": self.failures,
            "health": self.health.state(now),
            "groups": [g.name for g in self.groups],
        }
        if self.provider:
            out["provider"] = True
        if self.pool is not None:
            out["pool"] = self.pool.stats()
        return out


def _backend_key(spec, cfg, provider):
    # Two configs that give a backend the same key may share its runtime object across a reload.
    conn = (cfg.pool, cfg.timeouts.connect, cfg.timeouts.pool_idle, cfg.limits.high_water, cfg.health, cfg.outlier)
    return msgspec.json.encode((provider, spec if not provider else {**msgspec.structs.asdict(spec), "balance": None}, conn))


# -- pools ------------------------------------------------------------------------------------

HEADER, USER, PREFIX = 0, 1, 2


class Group:
    """One pool (or provider) at run time: its backends, its policy, its snapshot."""

    __slots__ = (
        "name", "models", "backends", "policy", "hashed", "keys", "limit", "vnodes", "snapshot", "fallback",
        "points", "provider", "choose",
    )

    def __init__(self, name, models, backends, balance, fallback=(), provider=False):
        self.name = name
        self.provider = provider
        self.models = list(models)
        self.backends = list(backends)
        self.fallback = list(fallback)
        self.limit = balance.max_in_flight
        self.vnodes = balance.vnodes
        self.hashed = balance.policy == "consistent_hash"
        if balance.policy == "round_robin":
            self.policy = RoundRobin()
        elif self.hashed:
            self.policy = ConsistentHash(balance.load_factor)
        else:
            self.policy = LeastRequest()
        # The call the data path makes: (snapshot, exclude, limit) -> member or None.
        self.choose = least_request if self.hashed or balance.policy == "least_request" else self.policy.pick
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
        for backend in self.backends:
            backend.groups.append(self)
        self.rebuild()

    @property
    def needs_fields(self):
        return any(kind != HEADER for kind, _ in self.keys)

    def _points_of(self, backend):
        points = self.points.get(backend.label)
        if points is None:
            points = self.points[backend.label] = ring_points(backend.label, backend.weight, self.vnodes)
        return points

    def rebuild(self):
        self.snapshot = Snapshot([b for b in self.backends if b.eligible], self.vnodes, self._points_of)

    def key_hash(self, exchange):
        """The hash of the first key source the request has, or None."""
        for kind, arg in self.keys:
            if kind == HEADER:
                for name, value in exchange.headers:
                    if name == arg and value:
                        return hash_bytes(value)
            else:
                fields = routing_fields(exchange)
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

    def pick(self, exchange, exclude):
        if self.hashed:
            h = self.key_hash(exchange)
            if h is not None:
                return self.policy.pick(self.snapshot, h, exclude, self.limit)
        return self.choose(self.snapshot, exclude, self.limit)  # no key: least request

    def state(self):
        return {
            "name": self.name,
            "models": self.models,
            "policy": type(self.policy).__name__,
            "fallback": self.fallback,
            "backends": [b.label for b in self.backends],
            "eligible": [b.label for b in self.snapshot.members],
            "max_in_flight": self.limit,
            "snapshot": self.snapshot.stats(),
        }


class Route:
    """Where requests for one model go: its pool, then each fallback, in order."""

    __slots__ = ("router", "groups", "name")

    def __init__(self, router, groups):
        self.router = router
        self.groups = tuple(groups)
        self.name = groups[0].name


# -- the router -------------------------------------------------------------------------------


class Router:
    def __init__(self, cfg, loop, previous=None):
        self.cfg = cfg
        self.loop = loop
        adopt = {}
        if previous is not None:
            for backend in previous.backends:
                adopt[backend.key] = backend
        self.backends = []
        by_key = {}

        def backend_for(spec, provider):
            key = _backend_key(spec, cfg, provider)
            backend = by_key.get(key)
            if backend is None:
                backend = adopt.pop(key, None)
                if backend is not None:
                    backend.groups = []  # the old router's groups are going away
                else:
                    backend = Backend(spec, loop, cfg, provider)
                backend.owner = self
                by_key[key] = backend
                self.backends.append(backend)
            return backend

        self.groups = {}
        for spec in cfg.groups():
            provider = not hasattr(spec, "backends")
            members = [backend_for(spec, True)] if provider else [backend_for(b, False) for b in spec.backends]
            self.groups[spec.name] = Group(
                spec.name, spec.models, members, spec.balance, getattr(spec, "fallback", ()), provider
            )

        def route_of(group):
            return Route(self, [group] + [self.groups[name] for name in group.fallback])

        self.routes = {}
        catch_all = None
        for group in self.groups.values():
            for model in group.models:
                self.routes[model] = route_of(group)
            if not group.models and not group.provider and catch_all is None:
                catch_all = route_of(group)
        first = next(iter(self.groups.values()))
        self.catch_all = catch_all
        self.default_route = catch_all or route_of(first)
        self.by_model = bool(self.routes)
        self.model_only = not any(g.needs_fields for g in self.groups.values())
        self.models = sorted(self.routes)
        retry = cfg.retry
        self.max_attempts = retry.attempts
        self.retry_statuses = frozenset(retry.on_status)
        self.budget = RetryBudget(retry.budget, retry.min_per_second, now=loop.time() if loop is not None else 0.0)
        self.models_body = _models_body(self.models) if self.models else None

    # -- the data path --

    def pick(self, exchange):
        """A backend for ``exchange``, counted in flight; raises a ProxyError when none."""
        route = self._route(exchange) if self.by_model else self.default_route
        exchange.route = route
        self.budget.on_request()
        for group in route.groups:
            backend = group.pick(exchange, None)
            if backend is not None:
                backend.acquire()
                return backend
        raise self._none_left(route)

    def repick(self, exchange):
        """Another backend for a retry of ``exchange`` (counted in flight), or None."""
        tried = exchange.tried
        if tried is None:
            exchange.tried = tried = [exchange.backend]
        elif exchange.backend not in tried:
            tried.append(exchange.backend)
        for group in exchange.route.groups:
            backend = group.pick(exchange, tried)
            if backend is not None:
                backend.acquire()
                return backend
        return None

    def _route(self, exchange):
        fields = routing_fields(exchange, self.model_only) if exchange.body else False
        model = fields.model if fields else None
        if model is None:
            return self.default_route
        route = self.routes.get(model)
        if route is not None:
            return route
        if self.catch_all is not None:
            return self.catch_all
        raise ClientError(
            f"The model `{model}` does not exist. Available models: {', '.join(self.models)}.",
            status=404,
            type="NotFoundError",
        )

    def _none_left(self, route):
        names = " -> ".join(g.name for g in route.groups)
        if any(len(g.snapshot) for g in route.groups):
            return NoBackend(f"every eligible backend of {names} is at its max_in_flight")
        return NoBackend(f"no healthy backend available in {names}")

    # -- beside the data path --

    def release(self, backend):
        """Kept for callers of the old interface: same as ``backend.release()``."""
        backend.release()

    def any_healthy(self):
        return any(b.eligible for b in self.backends)

    def find(self, name):
        for backend in self.backends:
            if backend.label == name:
                return backend
        return None

    def drain(self, name, drained=True):
        backend = self.find(name)
        if backend is None:
            return False
        backend.set_drained(drained)
        return True

    def attach_counters(self, counters, slot):
        """Share in-flight counts with the other workers (``counters`` has one column per
        backend, in ``self.backends`` order, the same in every worker of a generation)."""
        for index, backend in enumerate(self.backends):
            backend.attach(counters, slot, index)

    def close(self):
        """After a reload swapped this router out: drain the pools of backends the new router
        did not adopt (idle connections close now, busy ones when their exchange ends)."""
        for backend in self.backends:
            if backend.owner is self and backend.pool is not None:
                backend.pool.close()

    def state(self):
        now = self.loop.time() if self.loop is not None else 0.0
        return {
            "backends": [b.state(now) for b in self.backends],
            "pools": [g.state() for g in self.groups.values()],
            "models": self.models,
            "retry": {**self.budget.stats(), "attempts": self.max_attempts},
        }


def _models_body(models):
    return orjson.dumps(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fleetproxy"} for m in models],
        }
    )


def build_router(cfg, loop, previous=None):
    """The router for ``cfg`` (called at start and on reload). With ``previous`` (the router
    being replaced), backends whose settings did not change are carried over with their
    connections, health and in-flight counts; call ``previous.close()`` after the swap."""
    return Router(cfg, loop, previous)
