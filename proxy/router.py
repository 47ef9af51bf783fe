"""Which backend serves a request. Pure decisions over backend state; no I/O.

The interface the data path uses is two calls: ``pick(exchange)`` returns a Backend (and counts
the request in flight on it) or raises NoBackend; ``release(backend)`` uncounts it, exactly
once per pick, on every exit path (``relay.Exchange.finish`` is the only caller).
"""

from .errors import NoBackend
from .pool import Pool


class Backend:
    """Runtime state of one configured backend."""

    __slots__ = ("spec", "label", "host", "port", "authority", "base_path", "pool", "healthy", "in_flight", "requests")

    def __init__(self, spec, pool=None):
        self.spec = spec
        self.label = spec.label
        self.host = spec.host
        self.port = spec.port
        self.authority = (f"{spec.host}:{spec.port}").encode()
        self.base_path = spec.base_path.encode()
        self.pool = pool
        self.healthy = True  # optimistic until the first check says otherwise
        self.in_flight = 0
        self.requests = 0

    def state(self):
        out = {
            "name": self.label,
            "url": self.spec.url,
            "healthy": self.healthy,
            "in_flight": self.in_flight,
            "requests": self.requests,
        }
        if self.pool is not None:
            out["pool"] = self.pool.stats()
        return out


class RoundRobin:
    """Healthy backends in turn. The balancer issue replaces this behind the same interface."""

    def __init__(self, backends):
        self.backends = list(backends)
        self._next = 0

    def pick(self, exchange):
        backends = self.backends
        n = len(backends)
        for _ in range(n):
            backend = backends[self._next % n]
            self._next += 1
            if backend.healthy:
                backend.in_flight += 1
                backend.requests += 1
                return backend
        raise NoBackend("no healthy backend available")

    def release(self, backend):
        backend.in_flight -= 1

    def any_healthy(self):
        return any(b.healthy for b in self.backends)


def build_router(cfg, loop):
    """The router for ``cfg`` with a connection pool per backend (called at start and reload)."""
    return RoundRobin([Backend(spec, Pool(loop, spec.host, spec.port, cfg)) for spec in cfg.backends])
