"""Limits shared by every replica through one Redis (the ``tenants.redis`` section).

How this works. The shared-memory buckets (``table.py``) stay the fast path: a request is
first checked and charged there, and refused at once, without a round trip, when this replica
alone already spent the tenant's limit (then every replica together has too). What they admit
is confirmed against the same GCRA buckets kept in Redis, one key per tenant and limit, by one
Lua script run with EVALSHA: read the times, decide, store, all in one atomic step, on Redis's
own clock (``TIME``: the replicas' monotonic clocks do not agree, Redis's one clock does). When
Redis refuses, the local charge is undone and the answer is the 429 the global bucket gives,
with its Retry-After. Token corrections at a request's end (usage) are charged to both.

When Redis cannot answer. Each call has ``redis.timeout`` (default 50 ms); a failure (refused
connection, timeout, error) lets the local decision stand, is logged once (and once more when
Redis is back), counted in ``fleetproxy_tenant_redis_errors_total``, and Redis is left alone
for ``redis.retry_interval`` (no request pays a timeout meanwhile). So while Redis is away each
replica enforces the full limits on its own: N replicas admit up to N times a tenant's limit,
never less than one replica's. Concurrency limits are always per replica (a request in flight
is a count that a crashed replica would leave behind in Redis).
"""

import asyncio
import logging
import time

from .buckets import US
from .table import REDIS_ERRORS

log = logging.getLogger("fleetproxy.tenants")

# KEYS: one GCRA time per limit. ARGV: mode ("take" or "charge"), then per key its interval
# (us a unit), capacity (units) and cost (units; a negative charge is a refund).
# Returns: admitted (1/0), then per key remaining, reset (us) and retry-after (us).
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local take = ARGV[1] == 'take'
local n = #KEYS
local ok = 1
local tats, news, out = {}, {}, {}
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 1])
  local capacity = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local tolerance = capacity * interval
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local start = math.max(tat, now)
  tats[i] = tat
  if cost >= 0 then news[i] = start + cost * interval else news[i] = math.max(tat + cost * interval, now) end
  out[3 * i] = 0
  if take then
    local wait = start + math.min(cost, capacity) * interval - tolerance - now
    if wait > 0.5 then
      ok = 0
      out[3 * i] = math.ceil(wait)
    end
  end
end
for i = 1, n do
  local tat = tats[i]
  if ok == 1 then
    tat = news[i]
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  end
  local interval = tonumber(ARGV[3 * i - 1])
  local capacity = tonumber(ARGV[3 * i])
  local used = math.max(tat - now, 0)
  out[3 * i - 2] = math.max(0, math.min(capacity, math.floor((capacity * interval - used) / interval + 1e-9)))
  out[3 * i - 1] = math.floor(used)
end
table.insert(out, 1, ok)
return out
"""


class SharedLimits:
    def __init__(self, section, table):
        import redis.asyncio as aioredis

        self.client = aioredis.from_url(
            section.url, socket_timeout=section.timeout, socket_connect_timeout=section.timeout,
            retry_on_timeout=False, health_check_interval=0,
        )
        self.script = self.client.register_script(SCRIPT)
        self.timeout = section.timeout
        self.retry_interval = section.retry_interval
        self.prefix = section.prefix
        self.table = table
        self.down_until = 0.0  # monotonic s: Redis is not asked before then
        self.down = False  # logged as unreachable, not yet as back

    def ready(self):
        """Whether Redis may be asked now (not inside the pause after a failure)."""
        return time.monotonic() >= self.down_until

    async def take(self, tenant, estimate):
        """Charge one request and ``estimate`` tokens to ``tenant``'s shared buckets. Returns
        (admitted, requests answer, tokens answer), each answer shaped like ``Limit.take``'s
        (admitted, None, remaining, reset us, retry-after us) or None for a limit not set;
        None when Redis did not answer (the local decision stands)."""
        keys, args = self._args(tenant, 1, estimate)
        out = await self._run(keys, ["take", *args])
        if out is None:
            return None
        ok = bool(out[0])
        answers = []
        i = 1
        for limit in (tenant.requests, tenant.tokens):
            if limit is None:
                answers.append(None)
                continue
            answers.append((ok, None, int(out[i]), int(out[i + 1]), int(out[i + 2])))
            i += 3
        return ok, answers[0], answers[1]

    async def charge(self, tenant, tokens):
        """Correct ``tenant``'s shared token bucket by ``tokens`` (negative: a refund)."""
        if tenant.tokens is not None and tokens:
            limit = tenant.tokens
            await self._run([self._key(tenant, "tok")], ["charge", limit.interval, limit.capacity, tokens])

    def _args(self, tenant, requests, tokens):
        keys, args = [], []
        if tenant.requests is not None:
            keys.append(self._key(tenant, "req"))
            args += [tenant.requests.interval, tenant.requests.capacity, requests]
        if tenant.tokens is not None:
            keys.append(self._key(tenant, "tok"))
            args += [tenant.tokens.interval, tenant.tokens.capacity, tokens]
        return keys, args

    def _key(self, tenant, limit):
        return f"{self.prefix}tenant:{tenant.name}:{limit}"

    async def _run(self, keys, args):
        if not self.ready():
            return None
        try:
            out = await asyncio.wait_for(self.script(keys=keys, args=args), self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # unreachable, timed out, or an error reply: local limits decide
            self._failed(exc)
            return None
        if self.down:
            self.down = False
            log.warning("tenants: Redis answers again; limits are shared by every replica")
        return out

    def _failed(self, exc):
        self.down_until = time.monotonic() + self.retry_interval
        table = self.table
        table.lock(table.slots + 1)  # several workers add to the one counter
        try:
            table.cells[REDIS_ERRORS] += 1
        finally:
            table.unlock(table.slots + 1)
        if not self.down:
            self.down = True
            log.warning(
                "tenants: Redis does not answer (%s); each replica enforces the limits alone until it does",
                type(exc).__name__ if not str(exc) else exc,
            )

    async def close(self):
        try:
            await self.client.aclose()
        except Exception:
            pass


def exposition(table):
    """The tenants' families for /metrics, from the shared table."""
    return [
        "# HELP fleetproxy_tenant_redis_errors_total Redis calls for shared tenant limits that failed or timed out "
        "(the local limits decided instead).",
        "# TYPE fleetproxy_tenant_redis_errors_total counter",
        f"fleetproxy_tenant_redis_errors_total {table.cells[REDIS_ERRORS]}",
    ]


assert US == 1_000_000  # the script's times are microseconds, like buckets.py's
