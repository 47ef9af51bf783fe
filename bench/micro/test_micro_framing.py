"""Micro benchmarks of _speedups.framing: the pure-Python specification against its Cython build,
function by function, on vLLM-shaped bytes (the simulator's heads and events).

    python -m pytest bench/micro -q --benchmark-json bench/micro/results/$(date +%F)-framing.json
    python bench/micro/summarize.py bench/micro/results/<that file>.json   # ratios, as markdown

Each benchmark group holds one function on the same input, once per build; the summary divides
pure by native. Without a native build the native half is skipped (it fails instead under
FLEETPROXY_EXPECT_NATIVE=1, as the test suite does).
"""

import pytest

import _speedups

pure = _speedups.pure("framing")
native = _speedups.native("framing")

IMPLS = [pytest.param(pure, id="pure"), pytest.param(native, id="native")]

JSON_BODY = (
    b'{"id":"chatcmpl-a9760b0590dd7266","object":"chat.completion","created":1795992943,"model":"tiny",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"' + b" word" * 16 + b'",'
    b'"refusal":null,"annotations":null,"audio":null,"function_call":null,"tool_calls":[],'
    b'"reasoning_content":null},"logprobs":null,"finish_reason":"length","stop_reason":null,'
    b'"token_ids":null}],"service_tier":null,"system_fingerprint":null,"usage":{"prompt_tokens":14,'
    b'"total_tokens":30,"completion_tokens":16,"prompt_tokens_details":null},"prompt_logprobs":null,'
    b'"prompt_token_ids":null,"kv_transfer_params":null}'
)
JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ndate: Sun, 29 Nov 2026 22:55:43 GMT\r\nserver: fleetproxy-sim\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\nx-sim-backend: 127.0.0.1:38001\r\n\r\n"
    % len(JSON_BODY)
) + JSON_BODY
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ndate: Sun, 29 Nov 2026 22:55:43 GMT\r\nserver: fleetproxy-sim\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n"
    b"x-sim-backend: 127.0.0.1:38001\r\n\r\n"
)


def _chunk(payload):
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(i):
    return (
        b'data: {"id":"chatcmpl-8c595d90a7cbccdb","object":"chat.completion.chunk","created":1795992095,'
        b'"model":"tiny","choices":[{"index":0,"delta":{"content":" tok%02d"},"logprobs":null,'
        b'"finish_reason":null,"token_ids":null}]}\n\n' % i
    )


TOKEN = _chunk(_event(0))  # one token as vLLM sends it: one event, one chunk, one read
STREAM_16 = [SSE_HEAD] + [_chunk(_event(i)) for i in range(16)] + [_chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"]
BULK = b"x" * 65536


def _need(fr):
    if fr is None:
        reason = f"_speedups.framing_c is not built ({_speedups.why_not_native('framing')})"
        if _speedups.EXPECT_NATIVE:
            pytest.fail(f"FLEETPROXY_EXPECT_NATIVE is set but {reason}", pytrace=False)
        pytest.skip(reason)


def _fresh_feed(fr, data):
    """What one benchmark round does: a new framer fed ``data`` in one read."""

    def run():
        f = fr.ResponseFramer()
        f.feed(data)
        return f

    return run


@pytest.mark.parametrize("fr", IMPLS)
def test_new_framer(benchmark, fr):
    _need(fr)
    benchmark.group = "ResponseFramer()"
    benchmark(fr.ResponseFramer)


@pytest.mark.parametrize("fr", IMPLS)
def test_feed_json_response(benchmark, fr):
    """The framer's whole cost for a non-streaming request: head parse + body, one read."""
    _need(fr)
    benchmark.group = "feed: JSON response (head + 741 B body, 1 read)"
    assert benchmark(_fresh_feed(fr, JSON_RESPONSE)).done


@pytest.mark.parametrize("fr", IMPLS)
def test_feed_sse_head(benchmark, fr):
    """A streaming response's head alone (6 fields, chunked, an event stream), in one read."""
    _need(fr)
    benchmark.group = "feed: SSE response head (6 fields, 1 read)"
    assert benchmark(_fresh_feed(fr, SSE_HEAD)).event_stream


@pytest.mark.parametrize("fr", IMPLS)
def test_feed_sse_token(benchmark, fr):
    """Per token: one chunk holding one event, in one read."""
    _need(fr)
    benchmark.group = "feed: one SSE token chunk"
    f = fr.ResponseFramer()
    f.feed(SSE_HEAD)
    benchmark(f.feed, TOKEN)
    assert f.safe_end == len(TOKEN) and not f.error


@pytest.mark.parametrize("fr", IMPLS)
def test_feed_sse_token_split(benchmark, fr):
    """A token chunk cut in three reads (mid size line, mid data): the carry path."""
    _need(fr)
    benchmark.group = "feed: one SSE token chunk in 3 reads"
    f = fr.ResponseFramer()
    f.feed(SSE_HEAD)
    a, b, c = TOKEN[:1], TOKEN[1:100], TOKEN[100:]
    feed = f.feed

    def run():
        feed(a)
        feed(b)
        feed(c)

    benchmark(run)
    assert f.safe_end == len(c) and not f.error


@pytest.mark.parametrize("fr", IMPLS)
def test_feed_stream_16(benchmark, fr):
    """The framer's whole cost for a 16-token streaming request, one read per event."""
    _need(fr)
    benchmark.group = "feed: 16-token stream (head + 18 events + end, 20 reads)"

    def run():
        f = fr.ResponseFramer()
        for data in STREAM_16:
            f.feed(data)
        return f

    assert benchmark(run).done


@pytest.mark.parametrize("fr", IMPLS)
def test_feed_bulk_64k(benchmark, fr):
    """A 64 KiB read inside a Content-Length body: skipped over, never scanned."""
    _need(fr)
    benchmark.group = "feed: 64 KiB Content-Length read"
    f = fr.ResponseFramer()
    f.feed(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (1 << 60))
    benchmark(f.feed, BULK)
