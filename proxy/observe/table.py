"""The request metrics every worker records, in one shared-memory table the supervisor owns.

How this works.
- One segment of int64 cells, created by the supervisor at start and kept until it exits: a
  reload (SIGHUP) starts new workers on the same segment, so nothing restarts from zero.
- The supervisor hands each worker process a *row* of its own (``ROW_FREE`` / pid in the row
  header) and takes it back when the process exits. One writer per row: plain stores on
  aligned int64 cells, no locks (see ``process/shm.py`` for why that holds).
- A row holds ``series`` label sets. A label set is (model, backend, tenant); the worker
  claims a free series in its own row the first time it sees one, writes its counters' cells
  zero, the key's bytes, and publishes it last by storing the key length. Rows are private,
  so two workers never race for a series: the supervisor merges rows by the key's text.
- When a row has no free series left, new label sets are counted under the row's overflow
  series (``model="_other", backend="_other", tenant="_other"``) and the row's ``dropped``
  cell counts such requests (``fleetproxy_metrics_overflow_total``): totals stay right, only
  their breakdown is lost. ``observe.max_series`` sizes it.
- When a worker exits, the supervisor adds its row's counters and histograms (never its
  gauges) into totals it keeps in its own memory, then frees the row: counters only grow.

Cells per series: the key, requests by status class x outcome, tokens by kind, in-band error
events, response body bytes, gauges (requests in flight, the pool's waiters and open
connections), the pool's refusals, prompt tokens in flight (a gauge), then the histograms (finite buckets, +Inf, sum in us).
"""

from ..process.shm import Segment


# Outcomes, as the ``outcome`` label spells them.
OUTCOMES = ("ok", "client_abort", "upstream_error", "timeout", "refused", "retried", "fallback")
OK, CLIENT_ABORT, UPSTREAM_ERROR, TIMEOUT, REFUSED, RETRIED, FALLBACK = range(7)
CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")  # "none": no response from upstream
TOKEN_KINDS = ("prompt", "completion", "cached")

# Histograms: (name, help, bucket upper bounds in seconds). LLM latencies run from
# microseconds (the proxy's own time) to minutes (long generations).
HISTOGRAMS = (
    ("time_to_first_token_seconds", "Request received -> first response body byte from the backend.",
     (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60)),
    ("inter_token_latency_seconds", "Mean time between tokens of a streamed response.",
     (0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)),
    ("request_duration_seconds", "Request received -> response complete (end to end).",
     (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)),
    ("upstream_connect_seconds", "Opening a new connection to the backend.",
     (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)),
    ("queue_seconds", "Waiting in the proxy for a pooled connection to the backend.",
     (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)),
    ("proxy_request_overhead_seconds", "The proxy's own time: request received -> first byte sent upstream.",
     (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)),
    ("proxy_response_overhead_seconds", "The proxy's own time: first byte from the backend -> first byte to the client.",
     (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)),
)
H_TTFT, H_ITL, H_E2E, H_CONNECT, H_QUEUE, H_OVER_REQ, H_OVER_RESP = range(len(HISTOGRAMS))

KEY_BYTES = 128  # model, backend and tenant, NUL-separated, truncated to fit
KEY_CELLS = KEY_BYTES // 8
# Offsets inside a series.
S_KEYLEN = 0
S_KEY = 1
S_REQ = S_KEY + KEY_CELLS
S_TOK = S_REQ + len(CLASSES) * len(OUTCOMES)
S_ERR_EVENTS = S_TOK + len(TOKEN_KINDS)
S_BYTES = S_ERR_EVENTS + 1
S_IN_FLIGHT = S_BYTES + 1  # gauge
S_POOL_WAITING = S_IN_FLIGHT + 1  # gauge
S_POOL_OPEN = S_POOL_WAITING + 1  # gauge
S_POOL_REFUSED = S_POOL_OPEN + 1  # counter (written whole, once a second, by the worker)
S_TOK_FLIGHT = S_POOL_REFUSED + 1  # gauge: prompt tokens admitted, not finished
S_HIST = S_TOK_FLIGHT + 1
HIST_AT = []
_at = S_HIST
for _name, _help, _bounds in HISTOGRAMS:
    HIST_AT.append(_at)
    _at += len(_bounds) + 2  # finite buckets, +Inf, sum (us)
SERIES_CELLS = _at
GAUGES = (S_IN_FLIGHT, S_POOL_WAITING, S_POOL_OPEN, S_TOK_FLIGHT)  # not kept when a worker exits

# Row header.
R_PID = 0  # the process that owns the row; 0: free
R_DROPPED = 1  # requests counted under the overflow series
R_CONNECTIONS = 2  # gauge: open client connections
R_STREAMS = 3  # gauge: event streams being relayed
ROW_HEADER = 8
OVERFLOW = ("_other", "_other", "_other")
HEADER = 4  # segment header: rows, series per row, cells per series, layout version
VERSION = 2


class MetricsTable:
    """The segment, created (``name=None``) or attached. ``row_cells`` etc. describe layout."""

    def __init__(self, rows=0, series=0, name=None):
        # A new segment is zero-filled by the kernel; pages are touched (and charged) only as
        # rows are used.
        cells = HEADER + rows * (ROW_HEADER + series * SERIES_CELLS) if name is None else 0
        self.segment = Segment(cells, name)
        self.owner = self.segment.owner
        self.cells = self.segment.cells
        if self.owner:
            self.cells[0], self.cells[1], self.cells[2], self.cells[3] = rows, series, SERIES_CELLS, VERSION
        elif self.cells[2] != SERIES_CELLS or self.cells[3] != VERSION:
            raise RuntimeError("metrics table layout differs between supervisor and worker")
        self.rows, self.series = self.cells[0], self.cells[1]
        self.row_cells = ROW_HEADER + self.series * SERIES_CELLS

    @property
    def name(self):
        return self.segment.name

    def row_base(self, row):
        return HEADER + row * self.row_cells

    def series_base(self, row, index):
        return HEADER + row * self.row_cells + ROW_HEADER + index * SERIES_CELLS

    # -- the supervisor -----------------------------------------------------------------

    def claim_row(self, pid):
        """A free row for process ``pid``, zeroed, or -1 when every row is taken."""
        cells = self.cells
        for row in range(self.rows):
            base = self.row_base(row)
            if cells[base + R_PID] == 0:
                cells[base:base + self.row_cells] = memoryview(bytes(self.row_cells * 8)).cast("q")
                cells[base + R_PID] = pid
                return row
        return -1

    def free_row(self, row):
        self.cells[self.row_base(row) + R_PID] = 0

    def live_rows(self):
        cells = self.cells
        return [row for row in range(self.rows) if cells[self.row_base(row) + R_PID]]

    def read_row(self, row):
        """{(model, backend, tenant): list of the series' cells} and the row header."""
        cells = self.cells
        base = self.row_base(row)
        header = list(cells[base:base + ROW_HEADER])
        out = {}
        for index in range(self.series):
            s = self.series_base(row, index)
            n = cells[s + S_KEYLEN]
            if n <= 0:
                continue
            key = bytes(cells[s + S_KEY:s + S_KEY + KEY_CELLS].cast("B"))[:n]
            parts = key.decode("utf-8", "replace").split("\0")
            if len(parts) != 3:
                continue
            out[tuple(parts)] = list(cells[s:s + SERIES_CELLS])
        return out, header

    def close(self):
        self.segment.close()


def encode_key(model, backend, tenant):
    """The key's bytes; each label cut to 42 bytes so that three always fit (a cut inside a
    UTF-8 sequence reads back as U+FFFD)."""
    return b"\0".join(s.encode("utf-8", "replace").replace(b"\0", b"")[:42] for s in (model, backend, tenant))


def add_into(total, cells):
    """Fold a dead worker's series into ``total`` (counters and histograms, not gauges)."""
    for i in range(S_REQ, SERIES_CELLS):
        if i not in GAUGES:
            total[i] += cells[i]
