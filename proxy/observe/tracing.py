"""W3C Trace Context (``traceparent``) continued or started, forwarded to the backend, and
OpenTelemetry spans when the ``tracing`` extra is installed (``observe.tracing``).

Off by default, and then nothing here runs: the exchange has no ``Timing`` to hang a span on.
On: a client's valid ``traceparent`` is continued (same trace, its span as parent), anything
else starts a trace; the backend receives ``traceparent`` naming the proxy's span, so vLLM's
own spans (``--otlp-traces-endpoint``) hang under it. With the SDK the span is exported over
OTLP/HTTP (``otlp_endpoint``) with the request's model, backend, status, outcome and tokens as
attributes; without it only the header travels (ids are still fresh and well-formed).
"""

import os
import re

_TRACEPARENT = re.compile(rb"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16


def parse(value):
    """(trace id, parent span id, flags) of a valid ``traceparent`` value, else None."""
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == _ZERO_TRACE or m.group(2) == _ZERO_SPAN:
        return None
    return int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16)


def header(trace_id, span_id, flags):
    return b"00-%032x-%016x-%02x" % (trace_id, span_id, flags)


class Span:
    """One request's span: ids for the header, and the SDK span when there is one."""

    __slots__ = ("trace_id", "span_id", "flags", "otel")

    def __init__(self, trace_id, span_id, flags, otel=None):
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags
        self.otel = otel

    @property
    def traceparent(self):
        return header(self.trace_id, self.span_id, self.flags)


default_provider = None  # a TracerProvider for every Tracer made without one (tests: in-memory)


class Tracer:
    """``provider``: an OpenTelemetry TracerProvider (tests pass one with an in-memory
    exporter); None builds one from ``cfg`` when the SDK is installed."""

    def __init__(self, cfg, provider=None):
        self.otel = None
        provider = provider or default_provider
        if provider is None and cfg.otlp_endpoint:
            provider = _otlp_provider(cfg)
        if provider is not None:
            from opentelemetry import trace

            self.trace = trace
            self.otel = provider.get_tracer("fleetproxy")
        self.provider = provider

    def start(self, headers, method, target):
        parent = None
        for name, value in headers:
            if name == b"traceparent":
                parent = parse(value)
                break
        if self.otel is None:
            trace_id = parent[0] if parent else int.from_bytes(os.urandom(16), "big") or 1
            return Span(trace_id, int.from_bytes(os.urandom(8), "big") or 1, parent[2] if parent else 1)
        trace = self.trace
        context = None
        if parent is not None:
            remote = trace.SpanContext(parent[0], parent[1], True, trace.TraceFlags(parent[2]))
            context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        otel = self.otel.start_span(
            f"{method.decode(errors='replace')} {target.decode(errors='replace').split('?', 1)[0]}",
            context=context, kind=trace.SpanKind.SERVER,
        )
        sc = otel.get_span_context()
        return Span(sc.trace_id, sc.span_id, int(sc.trace_flags), otel)

    def end(self, span, status, outcome, model, backend, attempts, tokens):
        otel = span.otel
        if otel is None:
            return
        otel.set_attributes({
            "http.response.status_code": status,
            "fleetproxy.outcome": outcome,
            "gen_ai.request.model": model,
            "fleetproxy.backend": backend,
            "fleetproxy.attempts": attempts,
            "gen_ai.usage.input_tokens": tokens[0],
            "gen_ai.usage.output_tokens": tokens[1],
        })
        if status >= 500 or outcome not in ("ok", "fallback"):
            otel.set_status(self.trace.Status(self.trace.StatusCode.ERROR, outcome))
        otel.end()

    def close(self):
        if self.provider is not None and hasattr(self.provider, "shutdown"):
            self.provider.shutdown()


def upstream_headers(headers, extra, span):
    """The client's headers without its ``traceparent``, and ``extra`` with the proxy's."""
    return [h for h in headers if h[0] != b"traceparent"], (*extra, (b"traceparent", span.traceparent))


def _otlp_provider(cfg):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    provider = TracerProvider(
        resource=Resource.create({"service.name": cfg.service_name}),
        sampler=ParentBasedTraceIdRatio(cfg.sample_ratio),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=cfg.otlp_endpoint)))
    return provider
