"""``Tenants``: identification, limits and the token charge put together for a worker (the
package's docstring tells the parts and the rules).

Apart from the package on purpose: the supervisor imports ``table.py`` alone, and a process that
never touches a request does not load the admission path (its errors, buckets, key index) with
it.
"""

import math
import time

from ..http.errors import ClientError
from ..observe.metrics import NO_TOKENS, tokens_of
from ..routing.fields import decode
from .buckets import US, Limit, reset_text
from .identify import BAD, NO_KEY, KeyIndex, presented_key, strip_keys
from .table import KEY, REQ_TAT, TOK_TAT, TenantTable

ESTIMATE_BYTES = 4  # request body bytes per estimated prompt token
STREAM_BYTES = 128  # event-stream bytes per completion token, when the stream carries no usage
STREAM_CHARGE = 16  # tokens spent at a time while a stream runs: a lock per ~2 KiB, not per event
CONCURRENCY_RETRY = 1  # s: Retry-After when only the concurrency limit refused (no bucket to read)


class TenantRefused(ClientError):
    """401, 404 or 429: rendered with ``headers`` (Retry-After and the rate-limit fields)."""

    def __init__(self, message, status, type, tenant="", headers=b""):
        super().__init__(message, status, type)
        self.tenant = tenant
        self.headers = headers


class Tenant:
    """One configured tenant, with its limits as buckets and its slot in the shared table."""

    __slots__ = ("name", "models", "requests", "tokens", "max_concurrent", "tier", "weight", "slot", "base",
                 "priority")

    def __init__(self, spec, slot, base):
        self.name = spec.name
        self.models = frozenset(spec.models)
        rps = spec.requests_per_second
        self.requests = Limit(rps, spec.burst_requests or max(1, math.ceil(rps))) if rps else None
        tpm = spec.tokens_per_minute
        self.tokens = Limit(tpm / 60.0, tpm) if tpm else None
        self.max_concurrent = spec.max_concurrent or 0
        self.tier = spec.tier
        self.weight = spec.weight
        self.slot = slot
        self.base = base
        self.priority = b',"priority":%d}' % spec.tier


class Admission:
    """One admitted request: what ``finish`` must give back, and the headers its response carries."""

    __slots__ = ("tenant", "estimate", "headers", "done", "shared", "streamed", "next_charge")

    def __init__(self, tenant, estimate, headers):
        self.tenant = tenant
        self.estimate = estimate  # tokens charged at admission
        self.headers = headers  # x-ratelimit-* fields, CRLF-terminated (b"" without limits)
        self.done = False
        self.shared = False  # admitted here, to be confirmed by Redis (``Tenants.confirm``)
        self.streamed = 0  # completion tokens charged while the stream ran (``charge_stream``)
        # Stream body bytes at which the next charge is due: a plain int compare per read. A
        # tenant without a token limit is never due.
        limited = tenant is not None and tenant.tokens is not None
        self.next_charge = STREAM_BYTES * STREAM_CHARGE if limited else 1 << 62


class Tenants:
    def __init__(self, cfg, table, row):
        section = cfg.tenants
        self.table = table
        self.cells = table.cells
        self.row = row
        self.tenants = {}
        pairs = []
        for spec in section.list:
            slot = table.claim_slot(spec.name)
            if slot < 0:
                raise RuntimeError(f"the tenants table is full (tenants.max_tenants = {table.slots})")
            tenant = Tenant(spec, slot, table.slot_base(slot))
            self.tenants[spec.name] = tenant
            pairs += [(key, tenant) for key in spec.keys]
        self.keys = KeyIndex(pairs)
        self.default = self.tenants[section.default] if section.default is not None else None
        self.priority_clusters = frozenset(section.priority_clusters)
        self.section = section
        self.gate = None  # gate.FairGate, once serving (``start``)
        self.shared = None  # shared.SharedLimits, once serving with ``redis:``
        self.loop = None
        self.pending = set()  # token corrections on their way to Redis

    def start(self, loop, router):
        """Serving: the fair queue at admission (when ``fair_queue.enabled``), Redis (``redis:``)."""
        self.loop = loop
        if self.section.fair_queue.enabled:
            from .gate import FairGate

            self.gate = FairGate(self.section.fair_queue, loop, router)
        if self.section.redis is not None:
            from .shared import SharedLimits

            self.shared = SharedLimits(self.section.redis, self.table)

    @classmethod
    def build(cls, cfg, table=None, row=-1):
        """The worker's tenants, or None without a ``tenants:`` section. Serving alone (no
        ``table`` from a supervisor), a private table of one row."""
        if cfg.tenants is None:
            return None
        if table is None:
            table = TenantTable(1, cfg.tenants.max_tenants, shared=False)
            row = table.claim_row(1)
        return cls(cfg, table, row)

    def close(self):
        if self.gate is not None:
            self.gate.close()
        if self.shared is not None and self.loop is not None and not self.loop.is_closed():
            self.loop.create_task(self.shared.close())
        if self.table.owner:
            self.table.close()

    # -- admission --------------------------------------------------------------------------

    def identify(self, headers):
        """The calling tenant; raises TenantRefused (401) for a missing or wrong key."""
        key = presented_key(headers)
        if key is NO_KEY:
            if self.default is None:
                raise TenantRefused(
                    "You didn't provide an API key. Provide it as Authorization: Bearer <key>.",
                    401, "invalid_request_error",
                )
            return self.default
        tenant = self.keys.lookup(key) if key is not BAD else None
        if tenant is None:
            raise TenantRefused("Incorrect API key provided.", 401, "invalid_request_error")
        return tenant

    def admit(self, method, headers, body, now_us):
        """(Admission, the headers without API keys) or TenantRefused: 401, 404, 429."""
        tenant = self.identify(headers)
        if tenant.models and body:
            fields = decode(body, True)
            model = fields.model if fields else None
            if model not in tenant.models:
                raise TenantRefused(
                    f"The model `{model}` does not exist or you do not have access to it.", 404,
                    "invalid_request_error", tenant.name,
                )
        estimate = (len(body) + ESTIMATE_BYTES - 1) // ESTIMATE_BYTES if tenant.tokens is not None else 0
        headers = strip_keys(headers) if any(h[0] in _KEYED for h in headers) else headers
        if tenant.requests is None and tenant.tokens is None and not tenant.max_concurrent:
            return Admission(tenant, 0, b""), headers
        cells, base, slot = self.cells, tenant.base, tenant.slot
        self.table.lock(slot)
        try:
            if cells[base + KEY] == 0:  # defensive: a slot is claimed before it is used
                cells[base + KEY] = 1
            req = tok = None
            refused = False
            wait = 0
            if tenant.requests is not None:
                req = tenant.requests.take(cells[base + REQ_TAT], now_us, 1)
                refused |= not req[0]
                wait = max(wait, req[4])
            if tenant.tokens is not None:
                tok = tenant.tokens.take(cells[base + TOK_TAT], now_us, estimate)
                refused |= not tok[0]
                wait = max(wait, tok[4])
            busy = tenant.max_concurrent and self.table.in_flight(slot) >= tenant.max_concurrent
            if not refused and not busy:
                if req is not None:
                    cells[base + REQ_TAT] = req[1]
                if tok is not None:
                    cells[base + TOK_TAT] = tok[1]
                if tenant.max_concurrent:
                    cells[self.table.in_flight_cell(self.row, slot)] += 1
        finally:
            self.table.unlock(slot)
        fields = rate_headers(tenant, req, tok)
        if refused or busy:
            seconds = math.ceil(wait / US) if refused else CONCURRENCY_RETRY
            ms = math.ceil(wait / 1000) if refused else CONCURRENCY_RETRY * 1000
            if refused:
                what = "requests" if req is not None and not req[0] else "tokens"
                message = f"Rate limit reached for tenant {tenant.name} on {what}; retry after {seconds} s."
            else:
                message = f"Too many concurrent requests for tenant {tenant.name} (limit {tenant.max_concurrent})."
            extra = b"retry-after: %d\r\nretry-after-ms: %d\r\n" % (seconds, ms) + fields
            raise TenantRefused(message, 429, "rate_limit_exceeded", tenant.name, extra)
        admission = Admission(tenant, estimate, fields)
        if self.shared is not None and (req is not None or tok is not None) and self.shared.ready():
            admission.shared = True
        return admission, headers

    async def confirm(self, admission):
        """The shared (Redis) half of ``admit`` for an admission marked ``shared``: None when
        Redis admits it too (its headers then tell the shared buckets' numbers) or did not
        answer (the local decision stands); else the 429 to answer, the local charge undone."""
        tenant = admission.tenant
        answer = await self.shared.take(tenant, admission.estimate)
        if answer is None:
            return None
        ok, req, tok = answer
        admission.headers = rate_headers(tenant, req, tok)
        if ok:
            return None
        self.undo(admission, int(time.monotonic() * US))
        wait = max(a[4] for a in (req, tok) if a is not None)
        seconds, ms = max(1, math.ceil(wait / US)), max(1, math.ceil(wait / 1000))
        what = "requests" if req is not None and req[4] == wait else "tokens"
        return TenantRefused(
            f"Rate limit reached for tenant {tenant.name} on {what}; retry after {seconds} s.", 429,
            "rate_limit_exceeded", tenant.name,
            b"retry-after: %d\r\nretry-after-ms: %d\r\n" % (seconds, ms) + admission.headers,
        )

    def undo(self, admission, now_us):
        """Give back what ``admit`` took locally for a request Redis refused."""
        admission.done = True
        tenant = admission.tenant
        cells, base = self.cells, tenant.base
        self.table.lock(tenant.slot)
        try:
            if tenant.max_concurrent:
                cells[self.table.in_flight_cell(self.row, tenant.slot)] -= 1
            if tenant.requests is not None:
                cells[base + REQ_TAT] = tenant.requests.charge(cells[base + REQ_TAT], now_us, -1)
            if tenant.tokens is not None and admission.estimate:
                cells[base + TOK_TAT] = tenant.tokens.charge(cells[base + TOK_TAT], now_us, -admission.estimate)
        finally:
            self.table.unlock(tenant.slot)

    # -- the end ----------------------------------------------------------------------------

    def charge_stream(self, admission, body_bytes, now_us):
        """A stream of ``admission``'s reached ``body_bytes`` (at least ``next_charge``): spend
        its completion tokens so far from the bucket now, rather than all at its end."""
        tenant = admission.tenant
        if admission.done or tenant.tokens is None:
            return
        tokens = body_bytes // STREAM_BYTES - admission.streamed
        admission.streamed += tokens
        admission.next_charge = (admission.streamed + STREAM_CHARGE) * STREAM_BYTES
        self.table.lock(tenant.slot)
        try:
            at = tenant.base + TOK_TAT
            self.cells[at] = tenant.tokens.charge(self.cells[at], now_us, tokens)
        finally:
            self.table.unlock(tenant.slot)

    def finish(self, admission, used, now_us):
        """``admission``'s request ended having used ``used`` tokens (``tokens_used``): give
        back its in-flight count and correct its token charge (what ``charge_stream`` spent
        already is not spent twice). Once."""
        if admission.done:
            return
        admission.done = True
        tenant = admission.tenant
        whole = used - admission.estimate if tenant.tokens is not None else 0
        delta = whole - admission.streamed if tenant.tokens is not None else 0
        if whole and admission.shared and self.shared is not None and self.shared.ready():
            task = self.loop.create_task(self.shared.charge(tenant, whole))
            self.pending.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self.pending.discard)
        if not tenant.max_concurrent and not delta:
            return
        cells, slot = self.cells, tenant.slot
        self.table.lock(slot)
        try:
            if tenant.max_concurrent:
                cells[self.table.in_flight_cell(self.row, slot)] -= 1
            if delta:
                at = tenant.base + TOK_TAT
                cells[at] = tenant.tokens.charge(cells[at], now_us, delta)
        finally:
            self.table.unlock(slot)

    def release(self, ex):
        """The glue for ``Exchange.finish``: what the request ``ex`` used, then ``finish``.
        Once: the relay releases a response's end before its last bytes go out, and
        ``Exchange.finish`` then finds it done."""
        admission = ex.tenant
        if admission.done:
            return
        framer = ex.framer
        status = framer.status if framer is not None else 0
        tokens = tokens_of(ex.obs) if ex.obs is not None else NO_TOKENS
        streamed = framer.body_bytes if framer is not None and framer.event_stream else 0
        self.finish(admission, tokens_used(admission, tokens, status, streamed), int(time.monotonic() * US))

    def body_for(self, endpoint, admission, body):
        """``body`` as ``endpoint`` receives it: with the tenant's tier as vLLM's ``priority``
        when the endpoint serves a cluster listed in ``tenants.priority_clusters``."""
        if self.priority_clusters and self.priority_for(endpoint):
            return with_priority(body, admission.tenant.priority)
        return body

    def priority_for(self, endpoint):
        """Whether ``endpoint`` serves a cluster configured to receive the tenant's tier."""
        clusters = self.priority_clusters
        if not clusters:
            return False
        return any(c.name in clusters for c in endpoint.clusters)


_KEYED = frozenset((b"authorization", b"api-key", b"x-api-key"))


def tokens_used(admission, tokens, status, streamed_bytes):
    """Tokens a finished request is charged: ``tokens`` (prompt, completion, cached) from its
    usage when the response had one; else its estimate, plus one completion token per
    STREAM_BYTES of a stream (``streamed_bytes``); nothing for a refused or failed request."""
    if tokens[0] or tokens[1]:
        return tokens[0] + tokens[1]
    if not status or status >= 400:
        return 0
    return admission.estimate + streamed_bytes // STREAM_BYTES


def with_priority(body, priority):
    """``body`` (a JSON object) with the tenant's ``"priority"`` added last, so it wins over
    one the client sent (JSON decoders keep the last of duplicate names); unchanged when the
    body is no JSON object."""
    end = body.rstrip()
    if not end.endswith(b"}") or not body.lstrip().startswith(b"{"):
        return body
    inner = end[:-1].rstrip()
    if inner.endswith(b"{"):
        return inner + priority[1:]
    return inner + priority


def rate_headers(tenant, req, tok):
    """The x-ratelimit-* fields OpenAI's clients read, from the buckets' answers."""
    out = b""
    if req is not None:
        out += b"x-ratelimit-limit-requests: %d\r\nx-ratelimit-remaining-requests: %d\r\n" \
               b"x-ratelimit-reset-requests: %s\r\n" % (tenant.requests.capacity, req[2], reset_text(req[3]).encode())
    if tok is not None:
        out += b"x-ratelimit-limit-tokens: %d\r\nx-ratelimit-remaining-tokens: %d\r\n" \
               b"x-ratelimit-reset-tokens: %s\r\n" % (tenant.tokens.capacity, tok[2], reset_text(tok[3]).encode())
    return out
