"""A worker's side of the request metrics: integer adds into its own row of the shared table.

Per request (only when ``observe.metrics`` is on): a handful of ``clock()`` reads along the
exchange (start, sent upstream, response head, first body byte), then at the end one series
lookup (a dict hit after the first request of a label set), a bisect per histogram and a few
int64 adds. Tokens are read once, at the end, from the ``usage`` object: it closes a
non-streamed body, and is the last data event of a stream that asked for it (or that the proxy
asked for: streamusage.py). The relay keeps references to the last two reads of a body, or to
the last two that ended an SSE event (the framer's EVENT flag; events pass whole, so a usage
event split over reads is one buffer by then), never a copy: the usage is in one of them.
Nothing is done per token. Gauges that cost a walk (open connections, open streams, the
pools) are written once a second by ``sample``, off the request path.
"""

import re
from array import array
from bisect import bisect_left
from time import monotonic

from ..routing.bodywalk import Walked
from ..routing.fields import decode
from .streamusage import after, find, rfind, rfind_event_open, skips
from .table import (
    CLASSES, FALLBACK, H_CONNECT, H_E2E, H_ITL, H_OVER_REQ, H_OVER_RESP, H_QUEUE, H_TTFT, HIST_AT, HISTOGRAMS,
    KEY_CELLS, OUTCOMES, OVERFLOW, R_CONNECTIONS, R_DROPPED, R_STREAMS, ROW_HEADER, S_BYTES, S_ERR_EVENTS, S_KEY,
    S_KEYLEN, S_POOL_OPEN, S_POOL_REFUSED, S_POOL_WAITING, S_REQ, S_TOK, S_TOK_FLIGHT, SERIES_CELLS, encode_key,
)

# The clock of every time in a Timing: CLOCK_MONOTONIC to the nanosecond, not ``loop.time()``:
# uvloop's counts whole milliseconds (libuv's uv_now), which would put each observation of the
# proxy's own time (buckets from 20 us) at 0 or 1 ms. It is the cheaper call, too.
DEFAULT_TENANT = "default"  # until tenants exist (issue 15): Exchange.tenant fills it then
# Prompt tokens in flight are estimated at admission from the body: about 4 bytes of JSON per
# prompt token (BPE English text runs ~4 characters a token; the JSON keys of a chat body are
# few beside a real prompt). Exact counts arrive with the usage, after the fact.
BYTES_PER_TOKEN = 4
USAGE_SPAN = 4096  # bytes: at most what a usage object spans, searched across two reads
# Every histogram's bounds in one array of C doubles (compiled, its bytes: the bucket is found
# by a C search through a pointer, no float boxed per observation), each histogram's from ``_FIRST[h]``,
# and the ones every request records unpacked once for ``Recorder.record``: where each starts
# in a series, where its bounds start, how many.
_ALL_BOUNDS = array("d", [bound for _, _, bounds in HISTOGRAMS for bound in bounds])
_BOUND_BYTES = _ALL_BOUNDS.tobytes()  # the same doubles, read in C through a pointer (metrics.pxd)
_COUNT = [len(bounds) for _, _, bounds in HISTOGRAMS]
_FIRST = [sum(_COUNT[:h]) for h in range(len(HISTOGRAMS))]
_E2E_AT, _E2E_FIRST, _E2E_N = HIST_AT[H_E2E], _FIRST[H_E2E], _COUNT[H_E2E]
_RESP_AT, _RESP_FIRST, _RESP_N = HIST_AT[H_OVER_RESP], _FIRST[H_OVER_RESP], _COUNT[H_OVER_RESP]
_REQ_AT, _REQ_FIRST, _REQ_N = HIST_AT[H_OVER_REQ], _FIRST[H_OVER_REQ], _COUNT[H_OVER_REQ]
_TTFT_AT, _TTFT_FIRST, _TTFT_N = HIST_AT[H_TTFT], _FIRST[H_TTFT], _COUNT[H_TTFT]
_ITL_AT, _ITL_FIRST, _ITL_N = HIST_AT[H_ITL], _FIRST[H_ITL], _COUNT[H_ITL]
# A usage object's counts: one C search each, from where "usage" starts.
_PROMPT = re.compile(rb'"prompt_tokens": ?(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens": ?(\d+)')
_CACHED = re.compile(rb'"cached_tokens": ?(\d+)')
# vLLM's own layout, matched at once where "usage" starts: prompt, total, completion, then the
# details (null, or an object that opens with cached_tokens); any other falls to the searches.
_VLLM = re.compile(rb'"usage":\{"prompt_tokens":(\d+),"total_tokens":\d+,"completion_tokens":(\d+)'
                   rb'(?:\}|,"prompt_tokens_details":(?:null|\{"cached_tokens":(\d+)))')
# The same layout as the literals between its numbers, for the compiled walk (``_vllm_usage``).
_USAGE_AT = b'"usage":{"prompt_tokens":'
_TOTAL_AT = b',"total_tokens":'
_COMPLETION_AT = b',"completion_tokens":'
_DETAILS_AT = b',"prompt_tokens_details":'
_CACHED_AT = b'{"cached_tokens":'
_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (metrics.pxd)
_ERROR_EVENT = b'data: {"error"'  # an in-band error event (vLLM's, or the proxy's own)
# Searched from a body's end: vLLM writes the usage object after the choices.
_USAGE_KEY = b'"usage"'
_USAGE_OPEN = b'"usage":{'
_USAGE_SKIP = skips(_USAGE_KEY)
_NCLASS = len(OUTCOMES)
_STATUS_ROW = [i * _NCLASS for i in range(len(CLASSES))]
# Series offsets as this module's own names (typed in metrics.pxd).
_S_REQ, _S_BYTES, _S_TOK, _S_ERR, _S_FLIGHT = S_REQ, S_BYTES, S_TOK, S_ERR_EVENTS, S_TOK_FLIGHT
_BYTES_PER_TOKEN = BYTES_PER_TOKEN


def clock():
    """Monotonic seconds (``time.monotonic``'s clock): what every Timing field is read from, a
    few times per request. Compiled, one clock_gettime into a C double (metrics.pxd), with no
    float object made and no call through Python; uvloop's ``loop.time()`` would be cheaper
    still but counts whole milliseconds, too coarse for the proxy's own time."""
    if _COMPILED:
        return fleetproxy_monotonic()  # noqa: F821 (metrics.pxd)
    return monotonic()


# At most one read of the clock per read callback: ``hold()`` as a protocol's data_received
# starts, ``release()`` as it returns, and in between ``now()`` reads the clock the first time
# it is asked and answers that time after. A request takes a dozen readings (its reader's and
# the router's stamps, the pool's idle checks, its Timing) and at ~25 ns a read in a VM they
# were the proxy's biggest single user-space cost after malloc. Read lazily, because most
# callbacks ask for none: a token event of a stream is relayed without a time, and a read
# there cost ~0.16 us (the vDSO's page is cold by the next event; perf at scenario c). The
# times that measure the proxy's own work (``t_sent``, ``t_resp``, the end) stay ``clock()``:
# against the callback's first reading they time the work done after it.
_held = 0.0  # the running read callback's time; -1.0 in one not read yet, 0.0 outside one


def now():
    """The time the read callback running now first asked for (``hold``), else ``clock()``."""
    global _held
    held = _held
    if held > 0.0:
        return held
    t = clock()
    if held != 0.0:
        _held = t
    return t


def hold():
    global _held
    _held = -1.0


def release():
    global _held
    _held = 0.0


class Timing:
    """What one request's metrics, log line and span need; made only while observing."""

    __slots__ = (
        "t0", "t_sent", "t_head", "t_resp", "t_body", "t_wait", "tail", "prev", "tail_at", "tenant", "span", "usage",
        "model", "flight", "flight_tokens", "flight_label", "counted", "prompt_tokens", "completion_tokens",
        "cached_tokens",
    )

    def __init__(self, t0, tenant=DEFAULT_TENANT):
        self.t0 = t0  # request handed to the exchange
        self.t_sent = 0.0  # request head written upstream (last attempt)
        self.t_head = 0.0  # response head from upstream
        self.t_resp = 0.0  # response head written to the client
        self.t_body = 0.0  # first response body byte from upstream
        self.t_wait = 0.0  # s spent connecting or queued for a pooled connection
        self.tail = None  # the last read of the body (event streams: the last that ended an event)
        self.prev = None  # the one before it (the usage is in one of the two)
        self.tail_at = 0  # where the body starts in tail: a whole response's read, its head first (relay.py)
        self.tenant = tenant
        self.span = None  # tracing.Span when tracing is on
        self.counted = False  # the usage in tail / prev read into the counts (count_tokens)
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        self.usage = 0  # the proxy adds include_usage upstream (USAGE_ADDED), and took it back out (USAGE_TAKEN)
        self.model = None  # the request's model, once looked up
        self.flight = 0  # the series whose tokens-in-flight gauge holds ...
        self.flight_tokens = 0  # ... this request's estimate, until it ends
        self.flight_label = None  # the endpoint label that series is for (the request may move)


def new_timing(t0):
    """``Timing(t0)``, made per observed request: compiled, by its type's allocation (which
    leaves every field None or 0, as ``__init__`` sets all but two) rather than a call through
    ``__init__``'s arguments."""
    if not _COMPILED:
        return Timing(t0)
    timing = Timing.__new__(Timing)
    timing.t0 = t0
    timing.tenant = DEFAULT_TENANT
    return timing


class Recorder:
    """This worker's row: the series it has claimed and the cells to add into (one per worker
    process, so no __slots__: metrics.pxd declares its fields for the native build)."""

    def __init__(self, table, row):
        self.table = table
        self.cells = table.cells
        self.row = row
        self.base = table.row_base(row)
        self.index = {}  # (model, backend, tenant) -> first cell of its series
        # The last label set asked for, and its series: requests come in runs of one model,
        # backend and tenant, and comparing three strings costs less than a tuple and its hash.
        self.last_model = self.last_backend = self.last_tenant = None
        self.last_base = -1
        self.used = 0
        self.overflow = self._claim(OVERFLOW)  # series 0: what no longer fits goes here

    def _claim(self, key):
        base = self.table.series_base(self.row, self.used)
        self.used += 1
        raw = encode_key(*key)
        padded = raw + bytes(KEY_CELLS * 8 - len(raw))
        self.table.cells[base + S_KEY:base + S_KEY + KEY_CELLS] = memoryview(padded).cast("q")
        self.cells[base + S_KEYLEN] = len(raw)  # published last: readers skip a series until then
        self.index[key] = base
        return base

    def series(self, model, backend, tenant, dropped=1):
        """The series of a label set; ``dropped``: requests to count as overflowed if it is full."""
        if backend is self.last_backend and tenant is self.last_tenant and model == self.last_model:
            return self.last_base
        key = (model, backend, tenant)
        base = self.index.get(key)
        if base is None:
            if self.used >= self.table.series:
                self.cells[self.base + R_DROPPED] += dropped
                return self.overflow
            base = self._claim(key)
        self.last_model, self.last_backend, self.last_tenant, self.last_base = model, backend, tenant, base
        return base

    def observe(self, base, hist, seconds):
        """One observation of ``seconds`` into histogram ``hist`` of the series at ``base``."""
        self._add(base + HIST_AT[hist], _FIRST[hist], _COUNT[hist], seconds)

    def _add(self, at, first, n, seconds):
        """One observation of ``seconds`` into the histogram whose buckets start at ``cells[at]``
        and whose bounds are ``_ALL_BOUNDS[first:first + n]``: its bucket (``bisect_left``: a
        bound is the bucket's inclusive upper end) and, after the buckets and +Inf, its sum in
        microseconds. A method on scalars: compiled, a call that passed the views would copy
        their structs (some 200 bytes each) per observation."""
        if _COMPILED:  # a C search over C doubles; interpreted, the C bisect beats a Python loop
            lo = fleetproxy_bisect(_BOUND_BYTES, first, first + n, seconds)  # noqa: F821 (metrics.pxd)
        else:
            lo = bisect_left(_ALL_BOUNDS, seconds, first, first + n)
        self.cells[at + lo - first] += 1
        self.cells[at + n + 1] += int(seconds * 1e6)

    def record(self, obs, attempts, fallback, framer, status, outcome, now, model, backend):
        """A request ended with ``outcome`` (an index into table.OUTCOMES) and ``status`` (0:
        no response): its Timing (its tokens counted: ``count_tokens``) and response framer
        (None where it got none), the endpoints it was sent to (``attempts``, 0 where it was
        routed nowhere) and whether the one that served it is outside its route's first
        cluster (``fallback``; the observer reads both off the routing.Selection). Once per
        request, so written flat. The cells are read off ``self`` at each add: compiled, a
        local copy of the view costs a reference count taken and given back."""
        if outcome == 0 and fallback:
            outcome = FALLBACK
        if obs.flight_label is backend and obs.flight != self.overflow:
            base = obs.flight  # the series ``admitted`` found for this endpoint: no second lookup
        else:
            key = (model, backend, obs.tenant)
            base = self.index.get(key, -1)
            if base < 0:
                base = self.series(model, backend, obs.tenant)
        cls = status // 100 if 0 <= status < 600 else 0
        self.cells[base + _S_REQ + cls * _NCLASS + outcome] += 1
        if obs.flight_tokens:
            self.cells[obs.flight + _S_FLIGHT] -= obs.flight_tokens
            obs.flight_tokens = 0
        if framer is None:
            return None
        self.cells[base + _S_BYTES] += framer.body_bytes
        t0 = obs.t0
        t_head = obs.t_head
        if t_head:
            self._add(base + _E2E_AT, _E2E_FIRST, _E2E_N, now - t0)
            self._add(base + _RESP_AT, _RESP_FIRST, _RESP_N, obs.t_resp - t_head)
        if obs.t_sent and attempts == 1:
            seconds = obs.t_sent - t0 - obs.t_wait
            self._add(base + _REQ_AT, _REQ_FIRST, _REQ_N, seconds if seconds > 0.0 else 0.0)
        t_body = obs.t_body
        if t_body > 0.0:
            self._add(base + _TTFT_AT, _TTFT_FIRST, _TTFT_N, t_body - t0)
        at = base + _S_TOK  # the usage's counts (count_tokens: 0 where there was none)
        completion = obs.completion_tokens
        self.cells[at] += obs.prompt_tokens
        self.cells[at + 1] += completion
        self.cells[at + 2] += obs.cached_tokens
        if framer.event_stream and completion > 1 and t_body > 0.0:
            self._add(base + _ITL_AT, _ITL_FIRST, _ITL_N, (now - t_body) / (completion - 1))
        if framer.event_stream and obs.usage != _TAKEN:
            tail, prev = obs.tail, obs.prev
            if (tail is not None and find(tail, _ERROR_EVENT, obs.tail_at) >= 0) or (prev is not None and find(prev, _ERROR_EVENT) >= 0):
                self.cells[base + _S_ERR] += 1
        return None

    def admitted(self, obs, body, label, model):
        """A request (its Timing, its ``body``) was given the endpoint ``label``: its prompt
        tokens (estimated) are in flight until it ends."""
        if not model:
            return
        tokens = len(body) // _BYTES_PER_TOKEN
        # The series the request is recorded in at its end (unless it moves): no extra label set.
        base = obs.flight = self.series(model, label, obs.tenant, 0)
        obs.flight_label = label
        self.cells[base + _S_FLIGHT] += tokens
        obs.flight_tokens = tokens

    def retried(self, ex, endpoint, status):
        """An attempt of ``ex`` on ``endpoint`` that went to another endpoint instead."""
        base = self.series(model_of(ex.body, ex.selection.decoded), endpoint.label, ex.obs.tenant)
        self.cells[base + S_REQ + _STATUS_ROW[status // 100 if status < 600 else 0] + 5] += 1

    def waited(self, ex, seconds, fresh):
        """``ex`` waited ``seconds`` for its connection: to open it (``fresh``) or in the queue."""
        ex.obs.t_wait += seconds
        base = self.series(model_of(ex.body, ex.selection.decoded), ex.selection.endpoint.label, ex.obs.tenant)
        self.observe(base, H_CONNECT if fresh else H_QUEUE, seconds)

    def sample(self, ctx):
        """Once a second: the gauges that cost a walk, and the pools' counters."""
        cells, base = self.cells, self.base
        streams = 0
        for conn in ctx.connections:
            ex = conn.active
            if ex is not None and ex.head_sent and ex.framer is not None and ex.framer.event_stream:
                streams += 1
        cells[base + R_CONNECTIONS] = len(ctx.connections)
        cells[base + R_STREAMS] = streams
        for endpoint in ctx.router.endpoints:
            pool = endpoint.pool
            s = self.series("", endpoint.label, "")
            cells[s + S_POOL_WAITING] = len(pool.waiters)
            cells[s + S_POOL_OPEN] = len(pool.conns)
            cells[s + S_POOL_REFUSED] = pool.refused + pool.wait_timeouts
        gate = ctx.tenants.gate if ctx.tenants is not None else None
        if gate is not None:  # the tenants' fair queue, per route: a series (cluster, "", "")
            for cluster, waiting in gate.queued().items():
                cells[self.series(cluster, "", "", 0) + S_POOL_WAITING] = waiting


NO_TOKENS = (0, 0, 0)
# Timing.usage: include_usage added upstream (streamusage.py); then vLLM's usage event taken back
# out of the stream's end, which was vLLM's own end (finish, usage, [DONE]): no error event there.
USAGE_ADDED, USAGE_TAKEN = 1, 2
_TAKEN = USAGE_TAKEN  # (a C int where compiled: metrics.pxd)


def count_tokens(timing):
    """The usage in ``timing.tail`` / ``timing.prev`` read into the timing's own counts, once
    per request however many readers ask (compiled: C integers, no tuple and no int object)."""
    if not timing.counted:
        timing.counted = True
        _count(timing, timing.tail, timing.prev)


def tokens_of(timing):
    """The request's (prompt, completion, cached) tokens as a tuple: for the readers off the
    per-request path (tenants' token limits, a span's attributes)."""
    count_tokens(timing)
    return timing.prompt_tokens, timing.completion_tokens, timing.cached_tokens


def usage(tail, prev=None):
    """(prompt, completion, cached) tokens from the last ``usage`` object in ``prev`` + ``tail``,
    the last two reads of a response (see the module docstring); NO_TOKENS when none is there."""
    counts = Timing(0.0)
    if not _count(counts, tail, prev):
        return NO_TOKENS
    return counts.prompt_tokens, counts.completion_tokens, counts.cached_tokens


def _count(out, tail, prev):
    """``usage``'s counts into ``out`` (a Timing): True where a usage object was found, else
    False with every count 0."""
    out.prompt_tokens = out.completion_tokens = out.cached_tokens = 0
    if tail is None:
        return False
    at = _usage_at(tail, out.tail_at)
    if at < 0:
        if prev is None or at == -2:  # (-2: the stream's last event was in tail, and held none)
            return False
        # Not in the last read: in the one before, or cut between the two (a body's last read
        # is then short). Once per request, a few KiB at most.
        tail = prev[-USAGE_SPAN:] + tail[:USAGE_SPAN]
        at = _usage_at(tail, 0)
        if at < 0:
            return False
    if _COMPILED:
        if _vllm_walk(tail, at, out):
            return True
    else:
        match = _VLLM.match(tail, at)
        if match is not None:
            cached = match.group(3)
            out.prompt_tokens, out.completion_tokens = int(match.group(1)), int(match.group(2))
            out.cached_tokens = int(cached) if cached is not None else 0
            return True
    out.prompt_tokens = _number(_PROMPT, tail, at)
    out.completion_tokens = _number(_COMPLETION, tail, at)
    out.cached_tokens = _number(_CACHED, tail, at)
    return True


def _usage_at(data, lo):
    """Where the last usage object's key is in ``data[lo:]``: written as vLLM and OpenAI write it,
    ``"usage":{``, found by its brace; else any ``"usage"``. In a stream, only its last data
    event is read (``rfind_event_open``): -2 when that event is in ``data`` and holds no usage
    (a stream whose client asked for none), -1 for none otherwise."""
    at = rfind_event_open(data, _USAGE_OPEN, lo)
    if at >= 0:
        return at
    if at == -1:
        return rfind(data, _USAGE_KEY, _USAGE_SKIP, lo)
    at = rfind(data, _USAGE_KEY, _USAGE_SKIP, -2 - at)  # from the last event's start
    return at if at >= 0 else -2


def _vllm_usage(data, at):
    """``_VLLM.match(data, at)``'s counts, as ``_vllm_walk`` reads them, or None where it would
    not match (the walk's answer as a tuple, for the test that holds it to the regex)."""
    counts = Timing(0.0)
    if not _vllm_walk(data, at, counts):
        return None
    return counts.prompt_tokens, counts.completion_tokens, counts.cached_tokens


def _vllm_walk(data, at, out):
    """``_VLLM.match(data, at)``'s counts as one walk over the bytes, into ``out`` (a Timing):
    False where the regex would not match. Compiled, this walk runs as its C twin
    (``fleetproxy_vllm_usage``, metrics.pxd): a literal a memcmp of known size, the digits
    added in place: ~50 ns against ~560 for the regex and its three ``int()`` on vLLM's usage
    object; interpreted it would cost more than both, so ``usage`` runs it only compiled, and
    a test holds this walk, its twin and the regex to one another."""
    n = len(data)
    buf = data
    if _COMPILED:  # the walk below, in C (metrics.pxd)
        if not fleetproxy_vllm_usage(buf, n, at, counts):  # noqa: F821 (metrics.pxd)
            return False
        out.prompt_tokens, out.completion_tokens, out.cached_tokens = counts[0], counts[1], counts[2]  # noqa: F821
        return True
    cached = 0
    pos = after(data, at, _USAGE_AT)
    if pos < 0:
        return False
    prompt = _digits(buf, n, pos)
    if prompt < 0:
        return False
    pos = after(data, _skip_digits(buf, n, pos), _TOTAL_AT)
    if pos < 0 or _digits(buf, n, pos) < 0:
        return False
    pos = after(data, _skip_digits(buf, n, pos), _COMPLETION_AT)
    if pos < 0:
        return False
    completion = _digits(buf, n, pos)
    if completion < 0:
        return False
    pos = _skip_digits(buf, n, pos)
    if not (pos < n and buf[pos] == 125):  # "}": no details
        pos = after(data, pos, _DETAILS_AT)
        if pos < 0:
            return False
        if after(data, pos, b"null") < 0:
            pos = after(data, pos, _CACHED_AT)
            if pos < 0:
                return False
            cached = _digits(buf, n, pos)
            if cached < 0:
                return False
    out.prompt_tokens, out.completion_tokens, out.cached_tokens = prompt, completion, cached
    return True


def _digits(buf, n, pos):
    """The decimal number at ``buf[pos]`` (at least one digit, at most 18), else -1."""
    value = 0
    end = pos
    while end < n and 48 <= buf[end] <= 57:
        if end - pos == 18:
            return -1
        value = value * 10 + (buf[end] - 48)
        end += 1
    return value if end > pos else -1


def _skip_digits(buf, n, pos):
    while pos < n and 48 <= buf[pos] <= 57:
        pos += 1
    return pos


def model_of(body, fields):
    """The request's model, from the routing fields when routing decoded them already
    (``fields``: a Selection's ``decoded``, else None)."""
    if fields is None:
        if not body:
            return ""
        # Model only, and not kept on the selection: a retry's cache-aware pick needs all.
        fields = decode(body, True)
    if type(fields) is Walked:  # the body walk's answer (compiled: its slot read in C)
        walked = fields
        model = walked.model
        return model if model is not None else ""
    return (fields.model or "") if fields else ""


def _number(pattern, data, start):
    match = pattern.search(data, start)
    return int(match.group(1)) if match is not None else 0


assert SERIES_CELLS > S_POOL_REFUSED and ROW_HEADER > R_STREAMS
