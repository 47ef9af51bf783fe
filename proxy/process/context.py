"""What every connection of a worker shares (``Context``): config, loop, router, derived
constants. Read on every request's path, so compiled with its fields typed (context.pxd)."""

import os

from ..http import responses
from ..http.watchdog import Watchdog

_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (context.pxd)


class Context:
    """What every connection of this worker shares: config, loop, router, derived constants."""

    def __init__(self, cfg, loop, router):
        self.cfg = cfg
        self.loop = loop
        self.router = router
        # GET /v1/models lists the configured models when clusters are keyed by model.
        self.models_body = responses.models_body(router.models) if router.models else None
        self.connections = set()
        self.turned_away = 0  # connections refused over limits.max_connections
        # Request bytes waiting behind active exchanges, summed over this worker's connections
        # (bounded by limits.max_worker_queued_bytes; see http/downstream.py).
        self.queued_bytes = 0
        self.warned = set()  # conditions logged once per worker
        self.draining = False
        self.access_log = cfg.access_log
        self.read_limits = cfg.read_limits  # the body limit: the largest any cluster allows
        # Read twice per client read (pipeline.Pipeline._room): C integers here, where the
        # config struct would be three attribute lookups. A worker's config never changes
        # (a reload starts new workers).
        self.max_pipelined = cfg.limits.max_pipelined
        self.max_queued_bytes = cfg.limits.max_queued_bytes
        self.observe = None  # observe.Observer: metrics, access log, tracing (None: all off)
        self.tenants = None  # tenants.Tenants: keys and limits (None: no tenants: section)
        t = cfg.timeouts
        # The upstream watchdog ticks at a quarter of the shorter upstream timeout, so a stall
        # is caught between 1 and 1.25 times its limit (see http/relay.py, the watchdog).
        self.tick = min(t.first_byte, t.idle) / 4
        self.first_byte_ticks = max(1, round(t.first_byte / self.tick))
        self.idle_ticks = max(1, round(t.idle / self.tick))
        self.watchdog = Watchdog(loop, self.tick)
        # The client-connection timer never sleeps past the shortest client deadline (a write
        # stall included: it starts whenever the client stops reading).
        self.timer_cap = min(t.header_read, t.request_read, t.keepalive, t.write_stall)
        self._rid_prefix = b"%x-%x-" % (os.getpid(), int.from_bytes(os.urandom(4), "big"))
        self._rid = 0

    def next_request_id(self):
        """This worker's next request id: its prefix (pid and a random word), then a counter in
        hex. Compiled: one allocation, the digits written in C (context.pxd)."""
        self._rid += 1
        if _COMPILED:
            return fleetproxy_request_id(self._rid_prefix, self._rid)  # noqa: F821 (context.pxd)
        return self._rid_prefix + b"%x" % self._rid

    def ready(self):
        return not self.draining and self.router.any_healthy()
