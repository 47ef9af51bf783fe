"""The ``observe:`` section: request metrics, the access log, tracing."""

from typing import Annotated

from msgspec import Meta

from .base import Count, Share, _Base


class TracingConfig(_Base):
    enabled: bool = False  # traceparent continued or started, forwarded to the backend
    otlp_endpoint: str = ""  # OTLP/HTTP traces URL (http://collector:4318/v1/traces); "" = no export
    service_name: str = "fleetproxy"
    sample_ratio: Share = 1.0  # of traces the proxy starts (a client's sampled flag is followed)


class ObserveConfig(_Base):
    metrics: bool = True  # request metrics in the supervisor's /metrics (latency, tokens, outcomes)
    # Label sets (model x backend x tenant) one worker records apart; beyond them requests are
    # counted under model/backend/tenant "_other" (fleetproxy_metrics_overflow_total says how many).
    max_series: Annotated[int, Meta(ge=8, le=4096)] = 256
    # Rows of the shared table: worker processes alive at once, draining ones included. At
    # least twice the workers, so a reload can start a whole new generation beside the old.
    max_worker_rows: Count = 64
    access_log_path: str = "-"  # where observe's access log goes ("-": stdout); on with access_log
    # Count a stream's tokens when its client did not ask for usage: add include_usage upstream
    # (vLLM backends only) and take its effects back out of the client's stream. Turn off for
    # servers started with --enable-force-include-usage (their clients get usage anyway).
    stream_usage: bool = True
    tracing: TracingConfig = TracingConfig()
