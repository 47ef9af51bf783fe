"""The ``tenants:`` section: who is calling (API keys, stored hashed), what they may use, how fast.

```yaml
tenants:
  default: free              # requests without a key are this tenant; absent: they get a 401
  priority_clusters: [llm]   # clusters whose vLLM runs --scheduling-policy priority
  list:
    - name: team-a
      keys: ["sha256:9f86d08...15b0f00a08"]   # python -m proxy.tenants hash-key
      models: [llama]        # [] = every model
      requests_per_second: 5
      tokens_per_minute: 200000
      max_concurrent: 16
      tier: 0                # vLLM's priority field (lower runs first)
      weight: 2
    - name: free
      requests_per_second: 1
  fair_queue:                # while every backend of a model reports requests waiting
    max_length: 1024         # requests held per model and worker; beyond, 503 + Retry-After
    max_wait: 30             # s a request may be held; then 503 + Retry-After
  redis:                     # limits shared by every replica (absent: by this host's workers)
    url: redis://10.0.0.9:6379/0
    timeout: 0.05            # s per Redis call; past it, this replica's own limits answer
```

Keys are stored as ``sha256:<64 hex>`` of the key's bytes, never in clear: a leaked config
file gives away no key. SHA-256 without a salt is enough here because API keys are long random
strings (nothing to guess from a dictionary), and it keeps the per-request check to one hash.
"""

import re
from typing import Annotated, Optional

from msgspec import Meta

from .base import Count, Name, Seconds, _Base

List = list  # the section's own field is called ``list``

_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


class TenantConfig(_Base):
    name: Name
    keys: List[str] = []  # "sha256:<hex>" of each API key this tenant holds
    models: List[str] = []  # model names it may use; [] = all
    requests_per_second: Optional[Annotated[float, Meta(gt=0)]] = None  # None = unlimited
    burst_requests: Optional[Count] = None  # bucket size; default one second's worth (at least 1)
    tokens_per_minute: Optional[Count] = None  # prompt + completion; None = unlimited
    max_concurrent: Optional[Count] = None  # requests in flight at once; None = unlimited
    tier: Annotated[int, Meta(ge=-1000000, le=1000000)] = 0  # vLLM priority (lower runs first)
    weight: Annotated[float, Meta(gt=0, le=1000)] = 1.0  # share under contention (fair queuing)

    def __post_init__(self):
        for key in self.keys:
            if not _SHA256.match(key):
                raise ValueError(
                    f"tenant {self.name!r}: key {key[:12]!r}... must be sha256:<64 lower-case hex digits> "
                    "(make one with: python -m proxy.tenants hash-key)"
                )


class FairQueueConfig(_Base):
    """Weighted fair queuing when a model's backends are saturated (tenants/gate.py)."""

    enabled: bool = True
    max_length: Count = 1024  # requests held per model, per worker
    max_wait: Seconds = 30.0  # s one request may be held before its 503


class RedisConfig(_Base):
    """Limits shared by every replica through one Redis (tenants/shared.py)."""

    url: str  # redis://[:password@]host:port/db (rediss:// for TLS)
    timeout: Seconds = 0.05  # s a Redis call may take; past it the local limits decide
    retry_interval: Seconds = 1.0  # s after a failure before Redis is tried again (local limits meanwhile)
    prefix: str = "fleetproxy:"  # key prefix: one Redis can serve several proxy fleets

    def __post_init__(self):
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"tenants.redis.url {self.url!r} must start with redis://, rediss:// or unix://")
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:
            raise ValueError("tenants.redis needs the redis package: pip install 'fleetproxy[redis]'") from None


class TenantsConfig(_Base):
    list: List[TenantConfig] = []
    default: Optional[Name] = None  # the tenant of requests without a key; None: 401
    priority_clusters: List[Name] = []  # vLLM clusters that receive the tenant's tier as `priority`
    # Tenants the shared table holds (rows kept across reloads: a renamed tenant takes a new one).
    max_tenants: Annotated[int, Meta(ge=1, le=65536)] = 1024
    fair_queue: FairQueueConfig = FairQueueConfig()
    redis: Optional[RedisConfig] = None

    def __post_init__(self):
        names = set()
        owner = {}
        for tenant in self.list:
            if tenant.name in names:
                raise ValueError(f"tenant name {tenant.name!r} is used twice")
            names.add(tenant.name)
            for key in tenant.keys:
                if key in owner:
                    raise ValueError(f"tenants {owner[key]!r} and {tenant.name!r} hold the same key")
                owner[key] = tenant.name
        if self.default is not None and self.default not in names:
            raise ValueError(f"tenants.default {self.default!r} is not a tenant in tenants.list")
        if len(self.list) > self.max_tenants:
            raise ValueError(f"{len(self.list)} tenants listed, above tenants.max_tenants ({self.max_tenants})")
