"""Which endpoint serves a request: model -> route (a cluster and its fallback chain) -> endpoint.

How this works.
- Config becomes runtime objects once per start (``Router``): one ``Endpoint`` per distinct
  endpoint, one ``Cluster`` per pool or provider, one ``Route`` per model (the cluster that
  serves it, then its fallback chain, in order). Given the router it replaces, it adopts the
  endpoints whose settings did not change, with their connections, health and counts.
- ``Router.select(headers, body)`` returns a ``Selection``: the routing state of one request.
  It holds the route, the endpoint chosen and counted in flight, the endpoints tried so far and
  the body fields decoded on first need. The data path reads ``selection.endpoint`` and calls
  ``Router.reselect`` to retry and ``Selection.release`` when the request ends; it never writes
  routing state itself, and routing never touches the request's connection.
- The model is read from the body only when clusters are keyed by model; ``user`` and the
  prompt's opening only when a consistent-hash cluster keys on them and no earlier key source
  (a header) answered. One msgspec decode per request at most.
- Discovery changes one cluster's membership at a time (``set_members``): members that stay
  keep their Endpoint (health, counts, connections); a new one gets a column of the shared
  memory (``discovery/columns.py``); one that leaves is out of the next snapshot at once, while
  requests already on it finish on its connections.
"""

import logging
import time

from _speedups import PrefixTable

from ..discovery.columns import Columns, reserve, reset_column
from ..discovery.members import diff
from ..http.errors import ClientError, NoBackend
from ..observe.metrics import now as monotonic
from .cluster import Cluster
from .endpoint import Endpoint
from .fields import decode
from .labels import distinct_endpoints
from .retry import RetryPolicy

log = logging.getLogger("fleetproxy.routing")


class Route:
    """Where requests for one model go: its cluster, then each fallback, in order."""

    __slots__ = ("clusters", "name", "max_body")

    def __init__(self, clusters, max_body):
        self.clusters = tuple(clusters)
        self.name = clusters[0].name
        self.max_body = max_body  # bytes: the request body limit of the route's own cluster


_MONOTONIC = time.monotonic


class Selection:
    """The routing state of one request (see the module docstring)."""

    __slots__ = (
        "route", "headers", "body", "model_only", "decoded", "endpoint", "tried", "attempts", "counted",
        "blocks_of", "prompt_blocks",
    )

    def __init__(self, headers, body, model_only):
        self.headers = headers
        self.body = body
        self.model_only = model_only
        self.decoded = None  # fields.RoutingFields, False when the body has none, None: not yet
        self.route = None
        self.endpoint = None
        self.tried = None  # endpoints already tried (only after a retry)
        self.attempts = 0
        self.counted = False  # the request counts in flight on ``endpoint``
        self.blocks_of = None  # the cache_aware policy ``prompt_blocks`` were cut for
        self.prompt_blocks = None

    def fields(self):
        """The body's routing fields, decoded at most once."""
        decoded = self.decoded
        if decoded is None:
            decoded = self.decoded = decode(self.body, self.model_only)
        return decoded

    def blocks(self, policy):
        """The prompt's blocks as a cache_aware ``policy`` cuts them, computed once."""
        if self.blocks_of is not policy:
            self.blocks_of = policy
            # Decoded for its model only, a body holds no block of prompt (Router.short_body).
            self.prompt_blocks = None if self.model_only else policy.blocks(self.fields())
        return self.prompt_blocks

    def release(self):
        """The request ended: it no longer counts in flight on its endpoint (the endpoint it
        was counted on, whatever router is current by then). ``endpoint`` stays readable."""
        if self.counted:
            self.counted = False
            self.endpoint.release()


class Router:
    def __init__(self, cfg, loop, previous=None, table=None):
        """``table``: the prefix index the cache_aware clusters share (a PrefixTable over memory
        shared by the workers); a private one is made when needed and not given."""
        self.cfg = cfg
        self.loop = loop
        # Monotonic seconds, the same clock in every process: load reports and the prefix
        # index carry times that other workers compare.
        self.clock = time.monotonic
        adopt = {}
        if previous is not None:
            for endpoint in previous.endpoints:
                adopt[endpoint.key] = endpoint
        # One Endpoint per distinct endpoint, in column order (labels.py: the supervisor sizes
        # the generation's shared memory from the same list).
        self.endpoints = []
        by_label = {}
        # Imported here: this module can load while endpoint.py's is still running its imports
        # (endpoint -> connection_pool -> upstream -> relay -> this module, for Selection's
        # type), when its classes exist but its functions do not yet.
        from .endpoint import endpoint_key

        for spec, provider in distinct_endpoints(cfg):
            endpoint = adopt.pop(endpoint_key(spec, cfg, provider), None)
            if endpoint is not None:
                endpoint.clusters = []  # the old router's clusters are going away
            else:
                endpoint = Endpoint(spec, loop, cfg, provider)
            endpoint.owner = self
            endpoint.index = len(self.endpoints)  # its column in shared memory and in the prefix index
            by_label[spec.label] = endpoint
            self.endpoints.append(endpoint)

        specs = cfg.all_clusters()
        members_of = {}
        for spec in specs:
            provider = not hasattr(spec, "backends")
            members = (spec,) if provider else spec.backends
            members_of[spec.name] = [by_label[b.label] for b in members]
        # What readiness counts (``any_healthy``): the vLLM endpoints, or the providers when
        # nothing else is configured.
        self._ready_set()
        # Where each endpoint came from (/admin/backends): "static" (the config) or a discovery
        # source; discovered members take columns after the static ones (``set_members``).
        self.sources = dict.fromkeys((e.label for e in self.endpoints), "static")
        self.discovery = []  # the discovery sources' state objects (``state()``), set by their loops
        self.counters = None
        self.slot = 0
        self.columns = None
        self.on_request = None  # callables run, then cleared, by the next request placed (periodic.Pace)
        self.gate = None  # the tenants' fair queue (tenants/gate.py): its held requests are traffic too
        self.use_columns(Columns.local(len(self.endpoints), reserve(cfg)))
        if table is None and any(spec.balance.policy == "cache_aware" for spec in specs):
            table = PrefixTable.local(len(self.endpoints) + reserve(cfg), cfg.prefix_index.blocks_per_endpoint)
        self.table = table or None
        self.clusters = {}
        for spec in specs:
            provider = not hasattr(spec, "backends")
            self.clusters[spec.name] = Cluster(
                spec.name, spec.models, members_of[spec.name], spec.balance, getattr(spec, "fallback", ()),
                provider, self.table, cfg.prefix_index.ttl,
            )

        limits = {spec.name: getattr(spec, "max_body_bytes", None) or cfg.limits.max_body_bytes for spec in specs}

        def route_of(cluster):
            return Route([cluster] + [self.clusters[name] for name in cluster.fallback], limits[cluster.name])

        self.routes = {}
        catch_all = None
        for cluster in self.clusters.values():
            for model in cluster.models:
                self.routes[model] = route_of(cluster)
            if not cluster.models and not cluster.provider and catch_all is None:
                catch_all = route_of(cluster)
        first = next(iter(self.clusters.values()))
        self.catch_all = catch_all
        self.default_route = catch_all or route_of(first)
        self.by_model = bool(self.routes)
        self.model_only = not any(c.needs_fields for c in self.clusters.values())
        # A body shorter than one block of every cache_aware cluster holds no prompt they would
        # cut (its JSON is never shorter than the prompt ``fields.prompt_of`` builds from it):
        # unless a cluster hashes on the user or the prompt, its messages are not decoded.
        hashes_fields = any(c.needs_fields and not c.cached for c in self.clusters.values())
        blocks = [c.policy.block for c in self.clusters.values() if c.cached]
        self.short_body = min(blocks) if blocks and not hashes_fields else 0
        self.models = sorted(self.routes)
        self.retry = RetryPolicy(cfg.retry, now=loop.time() if loop is not None else 0.0)

    # -- the data path --

    def select(self, headers, body):
        """A Selection whose endpoint is counted in flight; raises a ProxyError when the
        model is unknown (404) or no endpoint of the route can take the request (503)."""
        return self.place(self.prepare(headers, body))

    def prepare(self, headers, body):
        """The first half of ``select``: a Selection with its route and no endpoint yet (what
        the tenants' fair queue holds while the route's backends are saturated)."""
        selection = Selection(headers, body, self.model_only or len(body) < self.short_body)
        route = selection.route = self._route(selection) if self.by_model else self.default_route
        if len(body) > route.max_body:
            # The reader took bodies up to the largest limit of any cluster (Config.read_limits):
            # a model whose cluster allows less is held to its own here.
            raise ClientError(f"request body larger than {route.max_body} bytes for this model", status=413)
        return selection

    def now(self):
        """``clock()``: the default one (time.monotonic) as ``metrics.now`` has it (the read
        callback's time, read once for all of it), compiled a C call with no float object."""
        clock = self.clock
        return monotonic() if clock is _MONOTONIC else clock()

    def place(self, selection):
        """The second half of ``select``: pick the endpoint of a prepared ``selection``."""
        route = selection.route
        self.retry.budget.on_request()
        now = self.now()
        if self.on_request is not None:  # the first request after an idle spell (periodic.Pace)
            self._wake(now)
        endpoint = self._pick(route, selection, None, now)
        if endpoint is None:
            raise self._none_left(route)
        endpoint.acquire()
        selection.endpoint = endpoint
        selection.counted = True
        selection.attempts = 1
        return selection

    def _wake(self, now):
        """Wake the background rounds that slept through an idle spell, after adopting the
        drains and ejections other workers decided meanwhile: the health round adopts them
        when it runs, which, paced, is after this request is placed."""
        for endpoint in self.endpoints:
            endpoint.sync_health(now)
        waiting = self.on_request
        self.on_request = None
        for wake in waiting:
            wake()

    def traffic(self):
        """(requests routed so far, requests in flight now), over every endpoint and, where the
        workers share counters, over the whole group: the same pair at two looks, with none in
        flight, says nothing was routed in between (periodic.Pace). Requests this worker's fair
        queue holds count as in flight: their release waits on fresh load reports."""
        routed = in_flight = 0
        for endpoint in self.endpoints:
            counters = endpoint.counters
            routed += endpoint.requests if counters is None else counters.requests(endpoint.index)
            in_flight += endpoint.load()
        if self.gate is not None:
            in_flight += self.gate.waiting
        return routed, in_flight

    def _pick(self, route, selection, exclude, now):
        """The route's clusters in order (fallback after the first), eligible endpoints
        first; only when none of any cluster can take it, a cluster in panic (see Cluster)."""
        for cluster in route.clusters:
            endpoint = cluster.pick(selection, exclude, now)
            if endpoint is not None:
                return endpoint
        for cluster in route.clusters:
            if cluster.panic is not None:
                endpoint = cluster.pick(selection, exclude, now, cluster.panic)
                if endpoint is not None:
                    return endpoint
        return None

    def reselect(self, selection, now):
        """Move ``selection`` to another endpoint for a retry, if attempts, the route and the
        retry budget allow; the in-flight count moves with it in one step. Returns False,
        having changed nothing, when it may not."""
        retry = self.retry
        if selection.attempts >= retry.attempts:
            return False
        current = selection.endpoint
        tried = selection.tried
        if tried is None:
            selection.tried = tried = [current]
        elif current not in tried:
            tried.append(current)
        endpoint = self._pick(selection.route, selection, tried, self.now())
        if endpoint is None:
            return False
        if not retry.budget.try_retry(now):
            return False
        endpoint.acquire()
        selection.endpoint = endpoint
        current.release()
        selection.attempts += 1
        return True

    @staticmethod
    def saturated(route, now):
        """Whether vLLM reports requests waiting (or a full KV cache) on every eligible
        endpoint of ``route``, its fallbacks included. An endpoint without a fresh report (a
        provider, a scrape that failed) counts as having room."""
        seen = False
        for cluster in route.clusters:
            for endpoint in cluster.snapshot.members:
                if not endpoint.queueing(now):
                    return False
                seen = True
        return seen

    def _route(self, selection):
        fields = selection.fields()
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
        names = " -> ".join(c.name for c in route.clusters)
        if any(len(c.snapshot) for c in route.clusters):
            return NoBackend(f"every eligible backend of {names} is at its max_in_flight")
        return NoBackend(f"no healthy backend available in {names}")

    # -- beside the data path --

    def any_healthy(self):
        """Readiness (``/health`` on the data port, ``/readyz``): any endpoint may take traffic.

        Only the fleet's own endpoints count when there are any: a provider is a fallback, so
        with every vLLM endpoint down the proxy is degraded, not ready; a load balancer
        told "ready" would keep sending traffic that only the paid fallback (or nobody, for
        the routes a provider refuses) can serve. A fleet of providers alone counts them."""
        return any(e.eligible for e in self.ready_endpoints)

    def find(self, name):
        for endpoint in self.endpoints:
            if endpoint.label == name:
                return endpoint
        return None

    def drain(self, name, drained=True):
        endpoint = self.find(name)
        if endpoint is None:
            return False
        endpoint.set_drained(drained)
        return True

    def attach_counters(self, counters, slot):
        """Share in-flight counts with the other workers (``counters`` has one column per
        endpoint, in ``self.endpoints`` order, the same in every worker of a generation)."""
        self.counters = counters
        self.slot = slot
        for index, endpoint in enumerate(self.endpoints):
            endpoint.attach(counters, slot, index)

    # -- membership from discovery --

    def use_columns(self, columns):
        """Claim discovered members' columns from ``columns`` (the generation's shared claims)."""
        self.columns = columns
        columns.busy = lambda column: self.counters is not None and self.counters.in_flight(column) > 0
        columns.reset = lambda column: reset_column(self.table, self.counters, column)

    def set_members(self, cluster_name, source, desired):
        """Make ``source``'s members of one cluster exactly ``desired`` ({label: EndpointConfig}),
        keeping the Endpoints of members that stay. Returns (added, removed, changed, refused)
        labels; refused: no column was free (``discovery.max_members``)."""
        cluster = self.clusters[cluster_name]
        current = {e.label: e for e in cluster.endpoints if self.sources.get(e.label) == source}
        added, removed, changed = diff({label: e.spec for label, e in current.items()}, desired)
        for label in removed:
            endpoint = current[label]
            cluster.leave(endpoint)
            if not endpoint.clusters:  # no other cluster holds it: it leaves the router
                self.endpoints.remove(endpoint)
                del self.sources[label]
                if endpoint.pool is not None:
                    endpoint.pool.close()  # idle connections now, busy ones when their request ends
        for label in changed:  # a new weight: same endpoint, new ring points
            endpoint, spec = current[label], desired[label]
            endpoint.spec = spec
            endpoint.weight = spec.weight
            for c in endpoint.clusters:
                c.points.pop(label, None)
        refused = []
        for label in added:
            endpoint = self.find(label)
            if endpoint is None:
                index = self.columns.claim(label)
                if index is None:
                    refused.append(label)
                    continue
                endpoint = Endpoint(desired[label], self.loop, self.cfg)
                endpoint.owner = self
                endpoint.index = index
                if self.counters is not None:
                    endpoint.attach(self.counters, self.slot, index)
                self.endpoints.append(endpoint)
                self.sources[label] = source
            elif cluster in endpoint.clusters:
                continue  # configured statically, or found by another source: it is there already
            cluster.join(endpoint)
        for c in {c for label in changed for c in current[label].clusters} | {cluster}:
            c.rebuild()
        self._ready_set()
        if refused:
            log.warning(
                "cluster %s: no shared column left for %s (discovery.max_members %d is reached)",
                cluster_name, ", ".join(refused), self.columns.count,
            )
        return added, removed, changed, refused

    def discovered(self):
        """Labels of the discovered members (their claims are refreshed with ``columns.touch``)."""
        return [label for label, source in self.sources.items() if source != "static"]

    def _ready_set(self):
        self.ready_endpoints = tuple(e for e in self.endpoints if not e.provider) or tuple(self.endpoints)

    def close(self):
        """After this router was replaced: drain the connection pools of endpoints the new
        router did not adopt (idle connections close now, busy ones when their request ends)."""
        for endpoint in self.endpoints:
            if endpoint.owner is self and endpoint.pool is not None:
                endpoint.pool.close()

    def state(self):
        now = self.loop.time() if self.loop is not None else 0.0
        return {
            "backends": [{**e.state(now), "source": self.sources.get(e.label, "static")} for e in self.endpoints],
            "clusters": [c.state() for c in self.clusters.values()],
            **({"discovery": [d.state() for d in self.discovery]} if self.discovery else {}),
            "models": self.models,
            "retry": self.retry.stats(),
        }
