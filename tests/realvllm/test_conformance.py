"""fleetproxy in front of a real vLLM: what a client sees is what vLLM sent.

Every comparison sends the same request twice, through the proxy and straight to
vLLM, with temperature 0 (or a fixed seed) so both runs generate the same tokens,
and compares what the openai SDK parsed, modulo ids and timestamps. The aborts
are judged by vLLM itself: its running gauge, its generated-token counter and its
log line for the request id the client chose (the proxy passes X-Request-Id
through, and vLLM names the request after it).
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import openai
import pytest

from conftest import wait_for

from .conftest import MODEL, call, same_stream

SHORT = [{"role": "user", "content": "Tell me about fleets of servers."}]


def client(port: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                         timeout=60, max_retries=0)


def scrub(obj):
    """A parsed response as plain data, without what differs between two runs."""
    data = obj.model_dump() if hasattr(obj, "model_dump") else obj
    data.pop("id", None)
    data.pop("created", None)
    return data


# -- same bytes, same meaning ----------------------------------------------------------


def test_chat_stream_with_usage_same_events_through_proxy(vllm, proxy):
    def events(port):
        stream = client(port).chat.completions.create(
            model=MODEL, messages=SHORT, max_tokens=12, temperature=0, seed=7, stream=True,
            stream_options={"include_usage": True})
        return [scrub(e) for e in stream]

    via = same_stream(lambda: (events(vllm.port), events(proxy.port)))
    assert via[0]["choices"][0]["delta"]["role"] == "assistant"
    assert via[-2]["choices"][0]["finish_reason"] == "length"
    assert via[-1]["choices"] == [] and via[-1]["usage"]["completion_tokens"] == 12


def test_chat_nonstream_same_through_proxy(vllm, proxy):
    def once(port):
        return scrub(client(port).chat.completions.create(
            model=MODEL, messages=SHORT, max_tokens=16, temperature=0, seed=7))

    direct, via = once(vllm.port), once(proxy.port)
    assert via == direct and via["usage"]["completion_tokens"] == 16


def test_completions_pass_through(vllm, proxy):
    def once(port, **kw):
        return client(port).completions.create(model=MODEL, prompt="one two three",
                                               max_tokens=8, temperature=0, seed=3, **kw)

    assert scrub(once(proxy.port)) == scrub(once(vllm.port))
    via = same_stream(lambda: ([scrub(e) for e in once(vllm.port, stream=True)],
                               [scrub(e) for e in once(proxy.port, stream=True)]))
    assert via[-1]["choices"][0]["finish_reason"] == "length"


def test_unknown_fields_reach_vllm_untouched(vllm, proxy):
    """vLLM's own sampling fields, sampled at temperature 1: only the same seed and the
    same top_k/min_tokens, delivered intact, give the same text through the proxy."""
    extra = {"seed": 1234, "top_k": 5, "min_tokens": 4, "repetition_penalty": 1.1}

    def text(port, **over):
        r = client(port).chat.completions.create(
            model=MODEL, messages=SHORT, max_tokens=16, temperature=1.0,
            extra_body={**extra, **over})
        return r.choices[0].message.content

    assert text(proxy.port) == text(vllm.port)
    assert text(proxy.port, seed=4321) != text(proxy.port)  # the seed is what decides
    # A field vLLM rejects is rejected by vLLM, in its words, through the proxy too.
    bad = {"model": MODEL, "messages": SHORT, "max_tokens": 2, "top_k": -5}
    direct = call(vllm.port, "POST", "/v1/chat/completions", bad)
    via = call(proxy.port, "POST", "/v1/chat/completions", bad)
    assert via[0] == direct[0] == 400 and via[2] == direct[2]
    assert "top_k" in json.loads(via[2])["error"]["message"]


def test_request_id_and_content_type_reach_vllm(vllm, proxy):
    rid = "conf-" + uuid.uuid4().hex[:12]
    r = client(proxy.port).chat.completions.create(
        model=MODEL, messages=SHORT, max_tokens=1, extra_headers={"x-request-id": rid})
    assert r.id == f"chatcmpl-{rid}"  # vLLM named the request after the client's id
    # vLLM refuses a body that is not declared JSON; the proxy must not "fix" that.
    body = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode()
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/json"}):
        direct = call(vllm.port, "POST", "/v1/completions", body, headers)
        via = call(proxy.port, "POST", "/v1/completions", body, headers)
        assert via[0] == direct[0] and json.loads(via[2]).keys() == json.loads(direct[2]).keys()
    assert via[0] == 200 and direct[0] == 200


def test_operational_endpoints_pass_through(vllm, proxy):
    def models(port):
        status, _, body = call(port, "GET", "/v1/models")
        data = json.loads(body)
        for m in data["data"]:  # creation times and permission ids are minted per call
            m.pop("created")
            for p in m["permission"]:
                p.pop("created"), p.pop("id")
        return status, data

    assert models(proxy.port) == models(vllm.port)
    assert models(proxy.port)[1]["data"][0]["id"] == MODEL
    # /health: the proxy answers it itself (its fleet has a healthy backend); vLLM's own too.
    assert call(proxy.port, "GET", "/health")[0] == 200
    assert call(vllm.port, "GET", "/health")[0] == 200
    for path, body in (("/tokenize", {"model": MODEL, "prompt": "a b c"}),
                       ("/tokenize", {"model": MODEL, "messages": SHORT}),
                       ("/detokenize", {"model": MODEL, "tokens": [134, 113, 119]})):
        direct = call(vllm.port, "POST", path, body)
        via = call(proxy.port, "POST", path, body)
        assert via[0] == direct[0] == 200 and via[2] == direct[2], path
    assert call(proxy.port, "GET", "/version")[2] == call(vllm.port, "GET", "/version")[2]
    status, headers, text = call(proxy.port, "GET", "/metrics")
    assert status == 200 and b"vllm:num_requests_running{" in text


# -- aborts ------------------------------------------------------------------------------


def raw_chat(rid: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: fleet\r\n"
            b"content-type: application/json\r\nx-request-id: %b\r\ncontent-length: %d\r\n\r\n"
            % (rid.encode(), len(data))) + data


def long_prompt(vllm, tokens: int) -> list[dict]:
    """A user message of about `tokens` prompt tokens that nothing cached starts with."""
    words = tokens
    for _ in range(4):
        msgs = [{"role": "user", "content": uuid.uuid4().hex + " " + " ".join(["hello"] * words)}]
        count = json.loads(call(vllm.port, "POST", "/tokenize",
                                {"model": MODEL, "messages": msgs})[2])["count"]
        if abs(count - tokens) <= 8:
            break
        words += tokens - count
    return msgs


def abort_case(vllm, proxy, body, leave_when, attempts: int = 5, leave_by: float | None = None):
    """Send through the proxy and close the client socket once `leave_when(seen, started)`
    says so; then hold vLLM to its promises: its running gauge drops to 0 within 1 s, its
    log names the request as aborted. Returns what the client saw and how many tokens
    vLLM generated for it.

    A try is run again when the client was too late for the phase under test
    (`leave_when` returns "retry") or when vLLM had already generated every token by
    the time the client left: this 2-core machine, one core vLLM's, sometimes starves
    other processes for a few hundred milliseconds, longer than the whole generation.
    A proxy that never aborts fails every try, so it still fails the test. For the same
    reason a try in which the client itself left later than ``leave_by`` seconds after sending
    (the test process starved) is run again: its token count measures the machine, not the
    proxy.
    """
    max_tokens = (body() if callable(body) else body)["max_tokens"]
    for attempt in range(attempts):
        rid = "abort-" + uuid.uuid4().hex[:16]
        generated_before = vllm.metric("vllm:generation_tokens_total")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as s:
            s.sendall(raw_chat(rid, body() if callable(body) else body))
            started = time.monotonic()
            s.settimeout(0.001)
            seen = b""
            while not (verdict := leave_when(seen, started)):
                assert time.monotonic() - started < 30, "never reached the phase to leave in"
                try:
                    data = s.recv(65536)
                except (socket.timeout, BlockingIOError):
                    continue
                if not data:
                    verdict = "retry"  # the whole response came: nothing left to abort
                    break
                seen += data
        left = time.monotonic()  # the client is gone (the socket is closed)
        if leave_by is not None and left - started > leave_by:
            verdict = "retry"
        stopped = wait_for(lambda: vllm.metric("vllm:num_requests_running") == 0, timeout=1.0)
        stopped_after = time.monotonic() - left
        aborted = verdict != "retry" and wait_for(
            lambda: vllm.log_has(rf"Abort\w* request.*chatcmpl-{rid}"), timeout=3.0)
        assert wait_for(lambda: vllm.metric("vllm:num_requests_running") == 0, timeout=10)
        time.sleep(0.2)  # the engine's last step lands in the counter
        generated = vllm.metric("vllm:generation_tokens_total") - generated_before
        if aborted:
            break
        # vLLM logs the abort with the client's X-Request-Id in the request name; without
        # that line it must have run to its end (the counter may lag a step or two)
        # before the client left, or the proxy failed.
        assert verdict == "retry" or generated >= 0.9 * max_tokens, \
            f"vLLM stopped chatcmpl-{rid} after {generated} tokens without logging an abort"
    else:
        pytest.fail(f"in {attempts} tries the client never left while vLLM was generating "
                    f"(or fleetproxy never aborted): the last one generated {generated} tokens")
    assert stopped and stopped_after < 1.5, "vLLM still ran the request 1 s after its client left"
    return seen, generated


def has_token(seen: bytes) -> bool:
    return b'"delta":{"content":' in seen or b'"finish_reason":"' in seen


def test_abort_before_first_token(vllm, proxy):
    """vLLM sends the response head once the request is queued, and its first chunk after
    the prefill: a client that leaves between the two leaves before the first token."""
    def leave(seen, started):
        if has_token(seen):
            return "retry"  # the prefill won the race; try again with a fresh prompt
        return b"\r\n\r\n" in seen

    body = {"model": MODEL, "max_tokens": 100, "stream": True, "temperature": 0}
    seen, generated = abort_case(  # a fresh prompt each try: nothing of it is cached
        vllm, proxy, lambda: {**body, "messages": long_prompt(vllm, 900)}, leave)
    assert seen.startswith(b"HTTP/1.1 200 ") and not has_token(seen)
    assert generated <= 2, generated  # at most the token of a step already under way


def test_abort_mid_stream(vllm, proxy):
    seen, generated = abort_case(
        vllm, proxy, {"model": MODEL, "messages": SHORT, "max_tokens": 1000, "stream": True,
                      "temperature": 0},
        lambda seen, started: seen.count(b'"delta":{"content":') >= 3)
    assert seen.startswith(b"HTTP/1.1 200 ")
    assert generated < 1000 / 4, generated


def test_abort_non_streaming(vllm, proxy):
    """A whole reply comes at the end (~1 s for 1000 tokens): leave after 0.1 s."""
    seen, generated = abort_case(
        vllm, proxy, {"model": MODEL, "messages": SHORT, "max_tokens": 1000, "temperature": 0},
        lambda seen, started: time.monotonic() - started > 0.1, leave_by=0.2)
    assert seen == b""  # nothing arrives before the whole reply
    assert generated < 1000 / 4, generated


def test_vllm_still_serves_after_the_aborts(proxy):
    r = client(proxy.port).chat.completions.create(model=MODEL, messages=SHORT, max_tokens=3)
    assert r.usage.completion_tokens == 3
