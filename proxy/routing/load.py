"""Endpoint load as vLLM itself reports it, sans-IO: parsing the reports, and what they mean.

Why. The proxy's own count of requests in flight is not an inference server's load: vLLM
batches dozens of sequences, so six requests against a mean of four is no overload, and a
router that sheds on such counts throws a session's prefix cache away for nothing. vLLM knows:
``num_requests_waiting`` > 0 means its batch or its KV cache is full and new requests queue.

Two sources, one record (``Report``: waiting, running, KV-cache usage, when, from where):
- in band: asked for with ``endpoint-load-metrics-format: text`` on forwarded requests, vLLM
  answers in the ``endpoint-load-metrics`` response header (ORCA text or JSON; non-streaming
  responses only), as fresh as the last response;
- scraped: ``GET /metrics`` on an interval (``prober.scrape_forever``) for streams and for
  servers that send no header: ``vllm:num_requests_waiting``, ``vllm:num_requests_running``,
  ``vllm:kv_cache_usage_perc``, or SGLang's ``sglang:num_queue_reqs``,
  ``sglang:num_running_reqs``, ``sglang:token_usage``.

``pressure`` turns a fresh report and the proxy's own in-flight count into what the balancing
policies compare: a load (this proxy's requests in flight there, or vLLM's queue when longer)
and whether the endpoint queues.
"""

import orjson

IN_BAND = 1
SCRAPED = 2
SOURCES = {IN_BAND: "in_band", SCRAPED: "scrape"}
KV_FULL = 0.95  # KV-cache usage from which vLLM is about to queue or preempt

_ORCA_NAMES = {
    b"named_metrics.num_requests_waiting": 0,
    b"named_metrics.num_requests_running": 1,
    b"named_metrics.kv_cache_usage_perc": 2,
}
# Prometheus families -> (field, is_sglang). Several label sets (engines, models) are summed,
# except the KV usage, a share, which takes the highest.
_FAMILIES = {
    b"vllm:num_requests_waiting": 0,
    b"vllm:num_requests_running": 1,
    b"vllm:kv_cache_usage_perc": 2,
    b"sglang:num_queue_reqs": 0,
    b"sglang:num_running_reqs": 1,
    b"sglang:token_usage": 2,
}
_SERVERS = [[(family, b"\n" + family, index) for family, index in _FAMILIES.items() if family.startswith(server)]
            for server in (b"vllm:", b"sglang:")]


def parse_orca(value):
    """(waiting, running or None, kv usage or None) from an ``endpoint-load-metrics`` value,
    or None when it says nothing useful. ``TEXT named_metrics.num_requests_waiting=0.0,
    named_metrics.kv_cache_usage_perc=0.0`` or ``JSON {"named_metrics": {...}}``."""
    fields = [None, None, None]
    if value[:5] == b"TEXT ":
        for item in value[5:].split(b","):
            name, sep, number = item.strip().partition(b"=")
            index = _ORCA_NAMES.get(name)
            if sep and index is not None:
                try:
                    fields[index] = float(number)
                except ValueError:
                    return None
    elif value[:5] == b"JSON ":
        try:
            named = orjson.loads(value[5:]).get("named_metrics")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        if not isinstance(named, dict):
            return None
        for name, index in _ORCA_NAMES.items():
            number = named.get(name[len(b"named_metrics."):].decode())
            if isinstance(number, (int, float)):
                fields[index] = float(number)
    else:
        return None
    if fields[0] is None:
        return None
    return fields[0], fields[1], fields[2]


def parse_metrics(text):
    """(waiting, running, kv usage) from Prometheus text, or None without the families.

    vLLM's /metrics is ~50 KiB of which a few lines matter, scraped twice a second. The text
    format puts a family's samples in one group of lines, so each family is found by a search
    for its name at a line start (memmem) and read to the end of its group; SGLang's names are
    looked for only where vLLM's are not: ~6 µs for vLLM's 51 KiB here, where splitting every line
    took ~120 µs."""
    fields = [None, None, None]
    for families in _SERVERS:
        for family, needle, index in families:
            start = _group(text, family, needle)
            while start >= 0 and text.startswith(family, start):
                end = text.find(b"\n", start)
                line = text[start:] if end < 0 else text[start:end]
                if line[len(family):len(family) + 1] in (b"{", b" "):  # not a longer name
                    try:
                        number = float(line.rsplit(b" ", 1)[1])
                    except (IndexError, ValueError):
                        number = None
                    if number is not None:
                        old = fields[index]
                        if old is None:
                            fields[index] = number
                        elif index == 2:
                            fields[index] = max(old, number)
                        else:
                            fields[index] = old + number
                start = -1 if end < 0 else end + 1
        if fields[0] is not None or fields[1] is not None:
            break
    if fields[0] is None and fields[1] is None:
        return None
    return fields[0] or 0.0, fields[1], fields[2]


def _group(text, family, needle):
    """Offset of the first sample line of ``family`` (past longer names that begin with it:
    ``vllm:num_requests_waiting_by_reason``), or -1."""
    size = len(family)
    at = 0 if text.startswith(family) else _line_of(text, needle, 0)
    while at >= 0:
        if text[at + size:at + size + 1] in (b"{", b" "):
            return at
        at = _line_of(text, needle, at)
    return -1


def _line_of(text, needle, at):
    """The offset of the next line from ``at`` on that begins with ``needle[1:]``, or -1."""
    found = text.find(needle, at)
    return -1 if found < 0 else found + 1


class Report:
    """One load report: what vLLM said, when (monotonic seconds) and through which source."""

    __slots__ = ("waiting", "running", "kv", "at", "source", "running_at")

    def __init__(self, waiting, running, kv, at, source, running_at=None):
        self.waiting = waiting
        # None: not reported. vLLM's in-band header carries none: an in-band report keeps the
        # last scrape's (Endpoint.observe), whose time ``running_at`` is, for as long as it is
        # younger than the load's max_age (the scraper keeps it so: prober._stale).
        self.running = running
        self.kv = kv  # 0..1, None: not reported
        self.at = at
        self.source = source
        # Monotonic seconds, None with running None; by default the report's own time.
        self.running_at = at if running_at is None and running is not None else running_at

    def state(self, now):
        return {
            "waiting": self.waiting,
            "running": self.running,
            "running_age_s": None if self.running_at is None else round(max(0.0, now - self.running_at), 3),
            "kv_cache_usage": self.kv,
            "age_s": round(max(0.0, now - self.at), 3),
            "source": SOURCES.get(self.source, "unknown"),
        }


def pressure(report, in_flight, now, max_age):
    """(load, queueing) for the balancing policies.

    load: the requests this proxy has in flight there, or vLLM's queue when that is longer
    (other clients queue there too). Not vLLM's running count, nor the sum: a report is up to a
    scrape interval old, and at the handful of requests a small fleet carries, a stale count of
    finished requests, or our own queued requests counted twice, would steer placement more
    than the load itself (each proxy replica balances its own requests). queueing: True when
    vLLM says new requests wait (or its KV cache is about full), False when it says they do
    not, None when no fresh report says anything (the caller then relies on the in-flight count
    alone)."""
    if report is None or now - report.at > max_age:
        return in_flight, None
    waiting = report.waiting
    queueing = waiting > 0 or (report.kv is not None and report.kv >= KV_FULL)
    return (waiting if waiting > in_flight else in_flight), queueing
