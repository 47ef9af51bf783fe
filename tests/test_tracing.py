"""Tracing (observe.tracing): traceparent continued or started and forwarded to the backend,
one OpenTelemetry span per request, caught by the SDK's in-memory exporter."""

import asyncio
import contextlib
import json
import socket
import threading

import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conftest import ScriptedBackend, free_port, raw_exchange, start_sim, wait_for, wait_port
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


@contextlib.contextmanager
def serving(backend_url):
    """A proxy serving in this process (so the exporter is in reach) in a thread of its own, in
    front of ``backend_url``: its port and the in-memory exporter its spans end in."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port, admin = free_port(), free_port()
    cfg = msgspec.convert({
        "listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}", "backends": [{"url": backend_url}],
        "observe": {"tracing": {"enabled": True}},
    }, Config)
    tracing.default_provider = provider
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(worker.serve(cfg, stop=stop),), daemon=True)
    thread.start()
    try:
        wait_port(port)
        yield port, exporter
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        tracing.default_provider = None


@pytest.fixture
def traced():
    backend = ScriptedBackend(answer)
    with serving(backend.url) as (port, exporter):
        yield port, backend, exporter
    backend.close()


@pytest.fixture(scope="module")
def sim():
    svc = start_sim()
    yield svc
    svc.stop()


def finished(exporter, count=1):
    """The exporter's finished spans once there are ``count`` (a span ends after the client's
    last byte: the proxy's bookkeeping may trail the response by a moment)."""
    assert wait_for(lambda: len(exporter.get_finished_spans()) >= count, timeout=5)
    return exporter.get_finished_spans()


def request(port, extra=b""):
    return chat(port, {"model": "m1"}, extra)


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


def chat(port, body, extra=b""):
    """``body`` POSTed to /v1/chat/completions, ``extra`` among the headers: the whole answer."""
    data = json.dumps(body, separators=(",", ":")).encode()
    return raw_exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                              b"connection: close\r\n" + extra + b"content-length: %d\r\n\r\n%s" % (len(data), data))


def test_a_streams_span_carries_the_tokens_of_the_usage_the_proxy_asked_for(sim):
    # The client did not ask for usage: the proxy asks vLLM for it, takes it back out of the
    # stream, and the span still gets the stream's token counts from it.
    with serving(sim.url) as (port, exporter):
        reply = chat(port, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                            "stream": True})
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
        assert b'"usage"' not in reply  # what the client gets is what it asked for
        (span,) = finished(exporter)
    assert span.attributes["gen_ai.usage.output_tokens"] == 5
    assert span.attributes["gen_ai.usage.input_tokens"] > 0
    assert span.attributes["fleetproxy.outcome"] == "ok" and span.status.is_ok


def test_a_backend_that_is_down_ends_the_span_as_an_error():
    with serving(f"http://127.0.0.1:{free_port()}") as (port, exporter):  # nothing listens there
        reply = chat(port, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.split(b"\r\n", 1)[0] in (b"HTTP/1.1 502 Bad Gateway", b"HTTP/1.1 503 Service Unavailable")
        (span,) = finished(exporter)
    assert span.attributes["http.response.status_code"] in (502, 503)
    assert span.attributes["fleetproxy.outcome"] in ("upstream_error", "refused")
    assert not span.status.is_ok


def test_a_client_that_leaves_mid_stream_ends_its_span_as_an_abort(sim):
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000,
                       "stream": True}).encode()
    with serving(sim.url) as (port, exporter):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"x-sim-itl: 0.01\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.close()
        (span,) = finished(exporter)  # ended when the client left, not 20 s later with the stream
    assert span.attributes["fleetproxy.outcome"] == "client_abort"
    # 499, nginx's "client closed request", as the access log and the status classes have it.
    assert span.attributes["http.response.status_code"] == 499 and not span.status.is_ok
