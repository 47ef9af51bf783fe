"""The Observer: the one object the data path talks to (see the package's docstring)."""

import os

from ..periodic import Pace
from .metrics import USAGE_ADDED, Recorder, clock, count_tokens, model_of, new_timing, now, tokens_of
from .streamusage import wants_usage
from .table import MetricsTable
from .table import OUTCOMES, REFUSED, TIMEOUT, UPSTREAM_ERROR

SAMPLE_EVERY = 1.0  # s between writes of the gauges that cost a walk (connections, streams, pools)


class Observer:
    __slots__ = ("loop", "recorder", "log", "tracer", "table", "owned", "stream_usage")

    def __init__(self, loop, recorder=None, log=None, tracer=None, table=None, owned=False, stream_usage=True):
        self.loop = loop
        self.stream_usage = stream_usage  # ask vLLM for a stream's usage when its client did not
        self.table = table  # table.MetricsTable this worker's row is in
        self.owned = owned  # made here (serving alone): this process renders and unlinks it
        self.recorder = recorder  # metrics.Recorder: this worker's row of the shared table
        self.log = log  # accesslog.AccessLog
        self.tracer = tracer  # tracing.Tracer

    @classmethod
    def build(cls, cfg, loop, table=None, row=-1, provider=None):
        """The worker's observer from ``cfg``, or None when nothing is on."""
        obs = cfg.observe
        owned = False
        if obs.metrics and table is None:
            # Serving alone (--single-process, the demo): a one-row table of our own.
            table, owned = MetricsTable(1, obs.max_series), True
            row = table.claim_row(os.getpid())
        recorder = Recorder(table, row) if obs.metrics and row >= 0 else None
        log = None
        if cfg.access_log:
            from .accesslog import AccessLog

            log = AccessLog(loop, obs.access_log_path)
        tracer = None
        if obs.tracing.enabled:
            from .tracing import Tracer

            tracer = Tracer(obs.tracing, provider)
        if recorder is None and log is None and tracer is None:
            return None
        return cls(loop, recorder, log, tracer, table, owned, getattr(obs, "stream_usage", True))

    def begin(self, ex):
        timing = ex.obs = new_timing(now())  # the time the request's last bytes were read
        if self.tracer is not None:
            timing.span = self.tracer.start(ex.headers, ex.method, ex.target)

    def done(self, ex, status, outcome):
        timing = ex.obs
        if timing is None or timing.t0 < 0.0:
            return
        now = clock()
        count_tokens(timing)  # the usage's counts, read once into the timing
        selection = ex.selection
        attempts = 0
        fallback = False
        backend = ""
        if selection is not None:
            attempts = selection.attempts
            endpoint = selection.endpoint
            backend = endpoint.label
            clusters = selection.route.clusters
            fallback = len(clusters) > 1 and clusters[0] not in endpoint.clusters
        model = timing.model
        if model is None:
            model = model_of(ex.body, selection.decoded if selection is not None else None)
        if self.recorder is not None:
            self.recorder.record(timing, attempts, fallback, ex.framer, status, outcome, now, model, backend)
        if self.log is not None:
            self.log.write(ex, status, outcome, now, model, backend)
        if timing.span is not None:
            self.tracer.end(timing.span, status, OUTCOMES[outcome], model, backend, attempts, tokens_of(timing))
        timing.t0 = -1.0  # once

    def retried(self, ex, endpoint, status):
        timing = ex.obs
        if self.recorder is not None:
            self.recorder.retried(ex, endpoint, status)
        timing.t_head = timing.t_resp = timing.t_body = 0.0  # the next attempt's, not this one's
        timing.tail = timing.prev = None
        timing.tail_at = 0
        timing.counted = False

    def admitted(self, ex):
        """The router gave ``ex`` an endpoint (``ex.selection``)."""
        timing = ex.obs
        if self.stream_usage and ex.body:  # from the fields routing decoded (or decodes now, once)
            timing.usage = USAGE_ADDED if wants_usage(ex.method, ex.target, ex.selection.fields()) else 0
        if self.recorder is not None:
            selection = ex.selection
            timing.model = model_of(ex.body, selection.decoded)
            self.recorder.admitted(timing, ex.body, selection.endpoint.label, timing.model)

    def waited(self, ex, seconds, fresh):
        if self.recorder is not None and ex.obs is not None:
            self.recorder.waited(ex, seconds, fresh)

    async def sample_forever(self, ctx):
        """The gauges that cost a walk, every SAMPLE_EVERY; while nothing is routed, every
        ``no_traffic_interval`` (periodic.Pace: only the open connections' count can move then)."""
        pace = Pace(ctx.router, SAMPLE_EVERY, ctx.cfg.no_traffic_interval)
        while True:
            if self.recorder is not None:
                self.recorder.sample(ctx)
            await pace.next()

    def close(self):
        if self.owned:
            self.table.close()
        if self.log is not None:
            self.log.close()
        if self.tracer is not None:
            self.tracer.close()


def outcome_of(err):
    """The outcome of an error response the proxy made: ``err`` an http.errors.ProxyError."""
    status = err.status
    if status == 504:
        return TIMEOUT
    if status == 503 or status < 500:
        return REFUSED  # a bound of ours, no endpoint left, or the client's request refused
    return UPSTREAM_ERROR
