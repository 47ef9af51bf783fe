"""Tracing (observe.tracing): traceparent continued or started and forwarded to the backend,
one OpenTelemetry span per request, caught by the SDK's in-memory exporter."""

import asyncio
import threading

import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conftest import ScriptedBackend, free_port, raw_exchange, wait_port
from proxy.config import Config
from proxy.observe import tracing
from proxy.process import worker

BODY = b'{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}'
PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def answer(request, conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                 % (len(BODY), BODY))


def traceparent_of(request):
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"traceparent":
            return value.strip()
    return None


@pytest.fixture
def traced():
    """A proxy serving in this process (so the exporter is in reach) in a thread of its own."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backend = ScriptedBackend(answer)
    port, admin = free_port(), free_port()
    cfg = msgspec.convert({
        "listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}", "backends": [{"url": backend.url}],
        "observe": {"tracing": {"enabled": True}},
    }, Config)
    tracing.default_provider = provider
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(worker.serve(cfg, stop=stop),), daemon=True)
    thread.start()
    wait_port(port)
    yield port, backend, exporter
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    tracing.default_provider = None
    backend.close()


def request(port, extra=b""):
    return raw_exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                              b"connection: close\r\n" + extra + b"content-length: 14\r\n\r\n{\"model\":\"m1\"}")


def test_traceparent_is_continued_and_span_exported(traced):
    port, backend, exporter = traced
    assert request(port, b"traceparent: " + PARENT + b"\r\n").startswith(b"HTTP/1.1 200")
    forwarded = traceparent_of(backend.requests[-1])
    trace, parent = PARENT.split(b"-")[1:3]
    assert forwarded.split(b"-")[1] == trace  # same trace
    assert forwarded.split(b"-")[2] != parent  # the proxy's own span is the backend's parent
    (span,) = exporter.get_finished_spans()
    assert "%032x" % span.context.trace_id == trace.decode()
    assert "%016x" % span.parent.span_id == parent.decode()
    assert "%016x" % span.context.span_id == forwarded.split(b"-")[2].decode()
    assert span.attributes["gen_ai.request.model"] == "m1"
    assert span.attributes["gen_ai.usage.input_tokens"] == 7
    assert span.attributes["http.response.status_code"] == 200


def test_trace_is_started_when_the_client_sent_none_or_garbage(traced):
    port, backend, exporter = traced
    for extra in (b"", b"traceparent: 00-zz-not-valid\r\n"):
        exporter.clear()
        assert request(port, extra).startswith(b"HTTP/1.1 200")
        forwarded = traceparent_of(backend.requests[-1])
        assert tracing.parse(forwarded) is not None
        (span,) = exporter.get_finished_spans()
        assert span.parent is None and "%032x" % span.context.trace_id == forwarded.split(b"-")[1].decode()


def test_parse_rejects_invalid_traceparent():
    assert tracing.parse(PARENT) is not None
    for bad in (b"", b"01-" + PARENT[3:], b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01", PARENT[:-1]):
        assert tracing.parse(bad) is None
