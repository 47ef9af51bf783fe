"""The vLLM simulator over real loopback sockets: wire shape, aborts, faults, queueing.

Most tests share one simulator running on a background thread with its own
uvloop loop and steer it per request with `x-sim-*` headers; tests that need
other flags start their own. Counters are read through /metrics, the way the
proxy's tests read them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h11
import openai
import pytest
import uvloop

from proxy.sim import SimConfig, start_sim
from proxy.sim.cli import parse_args
from proxy.sim.engine import WORDS, KVCache, Output
from proxy.sim.render import Reply
from realvllm.compare import event  # one parser of a chunk's single SSE event, shared

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "tests" / "data" / "vllm"  # a real vLLM's bytes; see tests/data/README.md
TIMEOUT = 5.0  # seconds; no socket read in this file waits longer


class SimThread:
    """A simulator on its own thread and loop, so tests can use blocking clients."""

    def __init__(self, config: SimConfig) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim = self.call(start_sim(config))
        self.port = self.sim.port

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def stop(self) -> None:
        self.call(self.sim.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@pytest.fixture(scope="module")
def sim():
    s = SimThread(SimConfig(port=0, name="sim-a", max_model_len=1024))  # the tiny model's
    yield s
    s.stop()


@pytest.fixture
def make_sim():
    started: list[SimThread] = []

    def make(**kw) -> SimThread:
        started.append(SimThread(SimConfig(port=0, **kw)))
        return started[-1]

    yield make
    for s in started:
        s.stop()


# -- clients ---------------------------------------------------------------------


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        raw = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=raw, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def metrics(port) -> dict[str, float]:
    status, headers, body = request(port, "GET", "/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def metric(port, name) -> float:
    """The first series of family `name` (all families here have one, or we pick it)."""
    for series, value in metrics(port).items():
        if series == name or series.startswith(name + "{"):
            return value
    raise KeyError(name)


def wait_for(predicate, timeout=1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def chat_body(max_tokens=None, stream=False, usage=False, text="hello there") -> dict:
    body = {"model": "tiny", "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


def raw_request(path, body, headers=None) -> bytes:
    data = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "host: sim", "content-type: application/json",
             f"content-length: {len(data)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def connect(port) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    return s


def read_until(s: socket.socket, predicate, buf=b"") -> bytes:
    """Read until predicate(buf) or EOF; a hang fails through the socket timeout."""
    while not predicate(buf):
        data = s.recv(65536)
        if not data:
            break
        buf += data
    return buf


def read_to_eof(s: socket.socket) -> bytes:
    return read_until(s, lambda b: False)


def split_response(data: bytes):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


def split_chunks(body: bytes):
    """HTTP chunks of body: (payloads, saw_last_chunk, rest). Bad sizes raise ValueError."""
    chunks, pos = [], 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return chunks, False, body[pos:]
        size = int(body[pos:eol], 16)
        if size == 0:
            assert body[eol + 2: eol + 4] == b"\r\n"
            return chunks, True, body[eol + 4:]
        if len(body) < eol + 4 + size:
            return chunks, False, body[pos:]
        assert body[eol + 2 + size: eol + 4 + size] == b"\r\n"
        chunks.append(body[eol + 2: eol + 2 + size])
        pos = eol + 4 + size


def shape(obj) -> tuple:
    """The ordered key lists that make a chunk kind's shape."""
    choice = obj["choices"][0] if obj["choices"] else {}
    return (list(obj), list(choice), list(choice.get("delta", {})), list(obj.get("usage", {})))


def stream_events(data: bytes):
    status, headers, body = split_response(data)
    chunks, complete, rest = split_chunks(body)
    return status, headers, [event(c) for c in chunks], complete


def is_complete_stream(buf: bytes) -> bool:
    return buf.endswith(b"\r\n0\r\n\r\n")


def exchange_stream(port, body, headers=None):
    with connect(port) as s:
        s.sendall(raw_request("/v1/chat/completions", body, headers))
        return stream_events(read_until(s, is_complete_stream))


# -- the OpenAI SDK sees a vLLM ------------------------------------------------------


def client(port):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                         timeout=TIMEOUT, max_retries=0)


def test_sdk_chat_nonstream_is_deterministic(sim):
    c = client(sim.port)
    msgs = [{"role": "user", "content": "tell me about fleets"}]
    a = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=7)
    b = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=7)
    other = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=8)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content != other.choices[0].message.content
    assert a.usage.completion_tokens == 7 and a.usage.prompt_tokens == 4
    assert a.usage.total_tokens == 11
    assert a.choices[0].finish_reason == "length"
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", a.id)
    assert a.choices[0].message.content.isascii()


def test_sdk_chat_stream_with_usage(sim):
    c = client(sim.port)

    def run():
        chunks = list(c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "stream please"}],
            max_tokens=9, stream=True, stream_options={"include_usage": True}))
        return chunks

    first, second = run(), run()
    texts = [c.choices[0].delta.content for c in first if c.choices and c.choices[0].delta.content]
    assert len(texts) == 9
    assert first[0].choices[0].delta.role == "assistant"
    assert first[-2].choices[0].finish_reason == "length"
    assert first[-1].choices == [] and first[-1].usage.completion_tokens == 9
    again = [c.choices[0].delta.content for c in second if c.choices and c.choices[0].delta.content]
    assert texts == again


def test_sdk_completions(sim):
    c = client(sim.port)
    whole = c.completions.create(model="tiny", prompt="one two three", max_tokens=5)
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 5
    assert whole.usage.prompt_tokens == 3

    def streamed():
        return list(c.completions.create(model="tiny", prompt="one two three", max_tokens=5,
                                         stream=True))

    parts = streamed()
    assert len(parts) == 5 and parts[-1].choices[0].finish_reason == "length"
    # The body seeds the text, and `stream` is part of the body: compare like with like.
    assert [p.choices[0].text for p in parts] == [p.choices[0].text for p in streamed()]


def test_tokens_header_sets_default_count_and_body_wins(sim):
    c = client(sim.port)
    msgs = [{"role": "user", "content": "x"}]
    r = c.chat.completions.create(model="tiny", messages=msgs,
                                  extra_headers={"x-sim-tokens": "4"})
    assert r.usage.completion_tokens == 4
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=2,
                                  extra_headers={"x-sim-tokens": "4"})
    assert r.usage.completion_tokens == 2
    assert c.chat.completions.create(model="tiny", messages=msgs).usage.completion_tokens == 16


# -- the bytes match the recording of a real vLLM -------------------------------------


@pytest.fixture(scope="module")
def recorded():
    return (RECORDED / "stream_raw.http").read_bytes(), json.loads((RECORDED / "nonstream.json").read_bytes())


def test_stream_matches_recorded_vllm(sim, recorded):
    raw, _ = recorded
    _, rec_headers, rec_events, rec_complete = stream_events(raw)
    status, headers, events, complete = exchange_stream(
        sim.port, chat_body(max_tokens=8, stream=True, usage=True))
    assert status == 200 and complete and rec_complete
    for name in ("content-type", "transfer-encoding"):
        assert headers[name] == rec_headers[name]
    assert "content-length" not in headers and headers["server"] == "fleetproxy-sim"
    kinds = [k for k, _ in events]
    assert kinds == [k for k, _ in rec_events] == (
        ["role"] + ["content"] * 7 + ["finish", "usage", "done"])
    rec_shapes = {k: shape(o) for k, o in rec_events if o}
    for kind, obj in events[:-1]:
        assert shape(obj) == rec_shapes[kind], kind
    ids = {obj["id"] for _, obj in events[:-1]}
    assert len(ids) == 1 and re.fullmatch(r"chatcmpl-[0-9a-f]{16}", ids.pop())
    assert events[-2][1]["usage"]["completion_tokens"] == 8


def test_nonstream_matches_recorded_vllm(sim, recorded):
    _, rec = recorded
    status, headers, body = request(sim.port, "POST", "/v1/chat/completions",
                                    chat_body(max_tokens=16))
    got = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert list(got) == list(rec)
    assert list(got["choices"][0]) == list(rec["choices"][0])
    assert list(got["choices"][0]["message"]) == list(rec["choices"][0]["message"])
    assert list(got["usage"]) == list(rec["usage"])


def test_each_chunk_is_one_event_to_a_strict_parser(sim):
    """h11 reads the stream; every HTTP chunk carries exactly one whole SSE event."""
    conn = h11.Connection(h11.CLIENT)
    body = json.dumps(chat_body(max_tokens=5, stream=True)).encode()
    with connect(sim.port) as s:
        s.sendall(conn.send(h11.Request(method="POST", target="/v1/chat/completions",
                                        headers=[("host", "sim"),
                                                 ("content-length", str(len(body)))])))
        s.sendall(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        events, piece = [], b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(s.recv(65536))
            elif isinstance(ev, h11.Data):
                piece = piece + ev.data if not ev.chunk_start else ev.data
                if ev.chunk_end:
                    events.append(event(bytes(piece)))
            elif isinstance(ev, h11.EndOfMessage):
                break
    assert [k for k, _ in events] == ["role"] + ["content"] * 4 + ["finish", "done"]
    assert conn.our_state is h11.DONE and conn.their_state is h11.DONE  # keep-alive


# -- small endpoints and errors --------------------------------------------------------


def test_operational_endpoints(sim):
    status, headers, body = request(sim.port, "GET", "/health")
    assert status == 200 and body == b""
    assert headers["x-sim-backend"] == "sim-a"
    models = json.loads(request(sim.port, "GET", "/v1/models")[2])
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    assert models["data"][0]["owned_by"] == "vllm" and models["data"][0]["max_model_len"] == 1024
    assert json.loads(request(sim.port, "GET", "/version")[2]) == {"version": "0.32.0-sim"}
    tok = json.loads(request(sim.port, "POST", "/tokenize",
                             {"model": "tiny", "prompt": "a b c"})[2])
    assert tok["count"] == 3 and len(tok["tokens"]) == 3 and tok["max_model_len"] == 1024
    assert request(sim.port, "GET", "/nope")[:3:2] == (404, b'{"detail":"Not Found"}')


def test_request_id_names_the_reply_and_is_echoed_only_when_enabled(sim, make_sim):
    """vLLM takes X-Request-Id as its request id; it echoes it only with
    --enable-request-id-headers (then it makes one up when the client sent none)."""
    _, headers, body = request(sim.port, "POST", "/v1/chat/completions",
                               chat_body(max_tokens=1), {"x-request-id": "req-42"})
    assert "x-request-id" not in headers and json.loads(body)["id"] != "chatcmpl-req-42"
    naming = make_sim(id_from_request_id=True)
    _, headers, body = request(naming.port, "POST", "/v1/chat/completions",
                               chat_body(max_tokens=1), {"x-request-id": "req-42"})
    assert "x-request-id" not in headers and json.loads(body)["id"] == "chatcmpl-req-42"
    echoing = make_sim(request_id_headers=True)
    _, headers, _ = request(echoing.port, "POST", "/v1/completions",
                            {"model": "tiny", "prompt": "x", "max_tokens": 1},
                            {"x-request-id": "req-43"})
    assert headers["x-request-id"] == "req-43"
    _, headers, body = request(echoing.port, "GET", "/health")
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])


# Each refusal as vLLM 0.32 words it (read off the real server; pydantic's layer
# says "Bad Request" and names the field's location, vLLM's own says BadRequestError).
@pytest.mark.parametrize("path, body, status, message, kind, param", [
    ("/v1/chat/completions", b"{not json", 400,
     "1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.1', 'msg': 'JSON decode error', "
     "'input': '<dict of 0 items>', 'ctx': {'error': 'Expecting property name enclosed in double "
     "quotes'}}", "Bad Request", "body.1"),
    ("/v1/chat/completions", {"model": "tiny"}, 400,
     "1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required', "
     "'input': '<dict of 1 items>'}", "Bad Request", "body.messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": "hi"}, 400,
     "1 validation error:\n  {'type': 'list_type', 'loc': 'body.messages', 'msg': 'Input should "
     "be a valid list', 'input': 'hi'}", "Bad Request", "body.messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400,
     "Cannot apply chat template to an empty conversation. Provide at least one message.",
     "BadRequestError", None),
    ("/v1/chat/completions", {"model": "big", "messages": [{"role": "user", "content": "x"}]},
     404, "The model `big` does not exist. Valid aliases: tiny.", "NotFoundError", "model"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 0}, 400,
     "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)",
     "BadRequestError", "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1.5}, 400,
     "1 validation error:\n  {'type': 'int_from_float', 'loc': 'body.max_tokens', 'msg': 'Input "
     "should be a valid integer, got a number with a fractional part', 'input': '1.5'}",
     "Bad Request", "body.max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 5000}, 400,
     "max_tokens=5000 cannot be greater than max_model_len=1024. Please request fewer output "
     "tokens. (parameter=max_tokens, value=5000)", "BadRequestError", "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "x " * 1100}, 400,
     "This model's maximum context length is 1024 tokens. However, your prompt contains at least "
     "1025 input tokens, which exceeds this limit even without any output tokens. Please reduce "
     "the length of the input prompt. (parameter=input_tokens, value=1025)",
     "BadRequestError", "input_tokens"),
    ("/v1/completions", {"model": "tiny", "max_tokens": 2}, 400,
     "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)",
     "BadRequestError", "prompt"),
    ("/tokenize", {"model": "tiny"}, 400,
     "2 validation errors:\n  {'type': 'missing', 'loc': 'body.prompt', 'msg': 'Field required', "
     "'input': '<dict of 1 items>'}\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field "
     "required', 'input': '<dict of 1 items>'}", "Bad Request", "body.prompt"),
])
def test_errors_in_vllms_words(sim, path, body, status, message, kind, param):
    got, headers, raw = request(sim.port, "POST", path, body)
    assert got == status and headers["content-type"] == "application/json"
    assert json.loads(raw) == {"error": {"message": message, "type": kind, "param": param,
                                         "code": status}}


def test_model_is_optional_and_max_tokens_is_clamped_to_the_context(sim):
    status, _, raw = request(sim.port, "POST", "/v1/completions",
                             {"prompt": "x " * 1000, "max_tokens": 600})
    usage = json.loads(raw)["usage"]
    assert status == 200 and json.loads(raw)["model"] == "tiny"
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (1000, 24)


def test_stop_string_ends_the_reply(sim):
    body = {"model": "tiny", "prompt": "stop here", "max_tokens": 30, "stop": ["e", "zz"]}
    got = json.loads(request(sim.port, "POST", "/v1/completions", body)[2])
    choice = got["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == "e"
    assert "e" not in choice["text"] and got["usage"]["completion_tokens"] < 30
    parts = list(client(sim.port).completions.create(**body, stream=True))
    assert "e" not in "".join(p.choices[0].text for p in parts)
    assert parts[-1].choices[0].finish_reason == "stop"
    assert metric(sim.port, 'vllm:request_success_total{engine="0",finished_reason="stop",'
                            'model_name="tiny"}') >= 2


def test_stop_string_spanning_tokens_counts_the_completing_token():
    out = Output(b"some body", 10)
    text = Reply(Output(b"some body", 10), False, "tiny", 1).text()
    words_ = [WORDS[t] for t in out.tokens()]
    stop = words_[2][-1] + words_[3][:2]  # starts in token 2, completes in token 3
    reply = Reply(out, False, "tiny", 1, stops=(stop, "never"))
    assert reply.out.n == 4 and reply.finish == "stop" and reply.stop == stop
    assert reply.text() == text[:text.index(stop)]
    assert json.loads(reply.token_event(3)[len(b"data: "):])["choices"][0]["text"] == ""


def test_metrics_families(sim):
    # One request of its own that ends by length (the test must not rely on earlier ones).
    assert request(sim.port, "POST", "/v1/chat/completions",
                   {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})[0] == 200
    status, headers, body = request(sim.port, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
    text = body.decode()
    for family, kind in [
        ("vllm:num_requests_running", "gauge"), ("vllm:num_requests_waiting", "gauge"),
        ("vllm:kv_cache_usage_perc", "gauge"), ("vllm:prompt_tokens_total", "counter"),
        ("vllm:generation_tokens_total", "counter"), ("vllm:request_success_total", "counter"),
        ("sim:requests_aborted_total", "counter"), ("sim:requests_total", "counter"),
        ("sim:connections_total", "counter"), ("sim:connections_open", "gauge"),
    ]:
        assert f"# TYPE {family} {kind}\n" in text and f"# HELP {family} " in text
    assert 'vllm:num_requests_running{engine="0",model_name="tiny"} ' in text
    assert re.search(r'vllm:request_success_total\{engine="0",finished_reason="length",'
                     r'model_name="tiny"\} [1-9]', text)


# -- connections -------------------------------------------------------------------------


def test_keep_alive_and_connection_close(sim):
    before = metric(sim.port, "sim:connections_total")
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=TIMEOUT)
    for _ in range(3):
        conn.request("POST", "/v1/chat/completions", json.dumps(chat_body(max_tokens=2)))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("connection") is None
        resp.read()
    conn.close()
    assert metric(sim.port, "sim:connections_total") == before + 2  # ours and metric()'s
    with connect(sim.port) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        status, headers, _ = split_response(read_to_eof(s))
    assert status == 200 and headers["connection"] == "close"


def test_idle_keep_alive_connection_closes_after_the_timeout(make_sim):
    # uvicorn's --timeout-keep-alive: idle this long between requests, the server closes; a
    # request in progress, however long, is not idle.
    sim = make_sim(keep_alive_timeout=0.3)
    with connect(sim.port) as s:
        started = time.monotonic()
        s.sendall(raw_request("/v1/chat/completions", chat_body(max_tokens=8, stream=True),
                              {"x-sim-itl": "0.06"}))  # ~0.5 s of stream: busy, not idle
        first = read_until(s, is_complete_stream)
        assert time.monotonic() - started > 0.4
        time.sleep(0.15)  # idle, but within the timeout: the next request is served
        s.sendall(raw_request("/v1/chat/completions", chat_body(max_tokens=2)))
        second = read_until(s, lambda b: b.count(b"\r\n\r\n") and b.endswith(b"}"))
        idle_since = time.monotonic()
        assert read_to_eof(s) == b""  # then closed by the server, without a byte
        waited = time.monotonic() - idle_since
    assert split_response(first)[0] == 200 and split_response(second)[0] == 200
    assert 0.25 < waited < 2.0
    never = make_sim(keep_alive_timeout=0)
    with connect(never.port) as s:
        s.settimeout(0.6)
        with pytest.raises(socket.timeout):
            s.recv(1)  # still open after twice the other's timeout


def test_pipelined_requests_are_answered_in_order(sim):
    slow = raw_request("/v1/chat/completions", chat_body(max_tokens=3, stream=True),
                       {"x-sim-itl": "0.05"})
    fast = raw_request("/v1/chat/completions", chat_body(max_tokens=2))
    with connect(sim.port) as s:
        s.sendall(slow + fast + b"GET /version HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = read_to_eof(s)
    status, _, body = split_response(data)
    chunks, complete, rest = split_chunks(body)
    assert status == 200 and complete and event(chunks[-1])[0] == "done"
    status, headers, body = split_response(rest)
    length = int(headers["content-length"])
    assert status == 200 and json.loads(body[:length])["usage"]["completion_tokens"] == 2
    status, _, body = split_response(body[length:])
    assert status == 200 and json.loads(body) == {"version": "0.32.0-sim"}


def test_malformed_request_gets_400_and_close(sim):
    with connect(sim.port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
        data = read_to_eof(s)
    assert data.startswith(b"HTTP/1.1 400 ")


# -- aborts: the signal the proxy's tests rely on -----------------------------------------


def _abort_case(sim, body, headers, wait_bytes):
    aborted = metric(sim.port, "sim:requests_aborted_total")
    success = metric(sim.port, "vllm:generation_tokens_total")
    with connect(sim.port) as s:
        s.sendall(raw_request("/v1/chat/completions", body, headers))
        seen = read_until(s, wait_bytes)
        assert wait_for(lambda: metric(sim.port, "vllm:num_requests_running") >= 1)
    closed = time.monotonic()
    assert wait_for(lambda: metric(sim.port, "sim:requests_aborted_total") == aborted + 1, 1.0)
    assert time.monotonic() - closed < 1.0
    assert wait_for(lambda: metric(sim.port, "vllm:num_requests_running") == 0, 1.0)
    generated = metric(sim.port, "vllm:generation_tokens_total") - success
    return seen, generated


def test_abort_mid_stream(sim):
    seen, generated = _abort_case(
        sim, chat_body(max_tokens=200, stream=True), {"x-sim-itl": "0.05"},
        lambda b: b.count(b'"content":') >= 3)
    assert generated < 200  # the generation stopped, not just the socket


def test_abort_before_first_token(sim):
    seen, generated = _abort_case(sim, chat_body(max_tokens=5, stream=True),
                                  {"x-sim-ttft": "2"}, lambda b: True)
    assert seen == b"" and generated == 0


def test_abort_non_streaming(sim):
    _abort_case(sim, chat_body(max_tokens=100), {"x-sim-itl": "0.05"}, lambda b: True)


def test_completed_request_is_not_an_abort(sim):
    aborted = metric(sim.port, "sim:requests_aborted_total")
    exchange_stream(sim.port, chat_body(max_tokens=3, stream=True), {"x-sim-itl": "0.01"})
    request(sim.port, "POST", "/v1/chat/completions", chat_body(max_tokens=3),
            {"x-sim-ttft": "0.01"})
    time.sleep(0.1)
    assert metric(sim.port, "sim:requests_aborted_total") == aborted


def test_stamps_say_when_the_request_came_and_the_first_token_left(sim):
    # CLOCK_MONOTONIC (perf_counter_ns) is one clock for every process of a host: the stamps
    # fall between this process's own readings, the simulated wait between them.
    before = time.perf_counter_ns()
    status, headers, events, complete = exchange_stream(
        sim.port, chat_body(max_tokens=3, stream=True), {"x-sim-ttft": "0.05", "x-sim-stamp": "1"})
    after = time.perf_counter_ns()
    assert status == 200 and complete
    received, sent = int(headers["x-sim-received-ns"]), int(headers["x-sim-sent-ns"])
    assert before < received and received + 50_000_000 <= sent < after
    _, headers, _, _ = exchange_stream(sim.port, chat_body(max_tokens=3, stream=True))
    assert "x-sim-received-ns" not in headers and "x-sim-sent-ns" not in headers  # only when asked


# -- queueing ----------------------------------------------------------------------------


def test_queue_beyond_max_concurrency(make_sim):
    s = make_sim(max_concurrency=1, ttft=0.5)
    results = []

    def one():
        results.append(request(s.port, "POST", "/v1/chat/completions", chat_body(max_tokens=2)))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    assert wait_for(lambda: metric(s.port, "vllm:num_requests_waiting") == 1, 0.4)
    assert metric(s.port, "vllm:num_requests_running") == 1
    # The slot is full, not the KV cache: the running request holds 1 of 4095 blocks.
    assert metric(s.port, "vllm:kv_cache_usage_perc") == 1 - 4094 / 4095
    for t in threads:
        t.join(TIMEOUT)
    assert [r[0] for r in results] == [200, 200]
    assert metric(s.port, "vllm:num_requests_waiting") == 0
    assert metric(s.port, "vllm:num_requests_running") == 0


def test_abort_while_queued(make_sim):
    s = make_sim(max_concurrency=1)
    with connect(s.port) as holder:
        holder.sendall(raw_request("/v1/chat/completions", chat_body(max_tokens=2),
                                   {"x-sim-fault": "hang"}))
        assert wait_for(lambda: metric(s.port, "vllm:num_requests_running") == 1)
        with connect(s.port) as queued:
            queued.sendall(raw_request("/v1/chat/completions", chat_body(max_tokens=2)))
            assert wait_for(lambda: metric(s.port, "vllm:num_requests_waiting") == 1)
        assert wait_for(lambda: metric(s.port, "sim:requests_aborted_total") == 1)
        assert metric(s.port, "vllm:num_requests_waiting") == 0
        assert metric(s.port, "vllm:num_requests_running") == 1
    assert wait_for(lambda: metric(s.port, "sim:requests_aborted_total") == 2)
    assert metric(s.port, "vllm:num_requests_running") == 0
    assert request(s.port, "POST", "/v1/chat/completions", chat_body(max_tokens=1))[0] == 200


# -- the prefix cache ---------------------------------------------------------------------


def words(n, start=0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


def test_prefix_cache_hits_leading_full_blocks_only():
    cache = KVCache(block_size=4, capacity=100)
    first = words(10).split()  # two full blocks and a tail of 2
    assert cache.lookup_insert(first) == (0, 8) and len(cache) == 2  # (hit, newly cached)
    assert cache.lookup_insert(first) == (8, 0)
    longer = first + words(7, 100).split()  # 17 tokens: the two old blocks, two new ones
    assert cache.lookup_insert(longer) == (8, 8) and len(cache) == 4
    assert cache.lookup_insert(longer) == (16, 0)
    # A different first block changes every key after it: the chain misses whole.
    assert cache.lookup_insert(["other"] + longer[1:]) == (0, 16)
    assert cache.lookup_insert(words(3).split()) == (0, 0)  # no full block: nothing to hash


def test_prefix_cache_recomputes_the_last_token_like_vllm():
    cache = KVCache(block_size=4, capacity=100)
    exact = words(8).split()
    cache.lookup_insert(exact)
    assert cache.lookup_insert(exact) == (4, 0)  # cached whole, yet its last block is computed
    assert cache.lookup_insert(exact + ["more"]) == (8, 0)


def test_prefix_cache_lru_eviction_takes_tails_first():
    cache = KVCache(block_size=2, capacity=3)
    a = words(4).split()  # blocks a1 a2
    cache.lookup_insert(a)
    cache.lookup_insert(words(4, 50).split())  # b1 b2: a2 (a's tail) is evicted first
    assert len(cache) == 3
    # a1 survived, a2 did not; a2 again and the partial block "x" evict b2 and b1.
    assert cache.lookup_insert(a + ["x"]) == (2, 2)
    cache.lookup_insert(words(4, 80).split())  # c1 c2 take x's block and a2 (freed first)
    cache.lookup_insert(words(4, 90).split())  # d1 d2 take a1 and c2
    assert cache.lookup_insert(a + ["x"]) == (0, 4)


def test_prefix_cache_off_with_zero_blocks():
    cache = KVCache(block_size=2, capacity=0)
    cache.lookup_insert(words(8).split())
    assert cache.lookup_insert(words(8).split()) == (0, 0) and len(cache) == 0


def test_cached_tokens_in_usage_and_metrics(make_sim):
    s = make_sim(block_size=4, prompt_tokens_details=True)
    c = client(s.port)
    system = {"role": "system", "content": words(10)}

    def ask(text, **kw):
        return c.chat.completions.create(
            model="tiny", max_tokens=2, messages=[system, {"role": "user", "content": text}], **kw)

    first = ask("one")  # 11 prompt tokens, none cached, 2 blocks (8 tokens) newly cached
    assert first.usage.prompt_tokens == 11
    assert first.usage.model_dump()["prompt_tokens_details"] == {
        "cached_tokens": 0, "created_cache_tokens": 8, "multimodal_tokens": None,
        "audio_tokens": None, "cache_write_tokens": None, "image_tokens": None,
        "text_tokens": None}
    second = ask("two three four five")  # 14 tokens: the system prompt's 2 full blocks hit
    assert second.usage.prompt_tokens == 14
    assert second.usage.prompt_tokens_details.cached_tokens == 8
    events = list(ask("two three four five six", stream=True,
                      stream_options={"include_usage": True}))
    assert events[-1].usage.prompt_tokens_details.cached_tokens == 12
    assert metric(s.port, "vllm:prefix_cache_queries_total") == 11 + 14 + 15
    assert metric(s.port, "vllm:prefix_cache_hits_total") == 8 + 12
    assert metric(s.port, "vllm:prompt_tokens_cached_total") == 20
    assert (s.sim.stats.prefix_cache_queries, s.sim.stats.prefix_cache_hits) == (40, 20)
    status, _, body = request(s.port, "GET", "/metrics")
    assert ('vllm:cache_config_info{block_size="4",enable_prefix_caching="True",engine="0",'
            'num_gpu_blocks="4096"} 1.0') in body.decode()


def test_cached_tokens_not_reported_by_default(make_sim):
    s = make_sim(block_size=4)
    body = {"model": "tiny", "prompt": words(9), "max_tokens": 1}
    request(s.port, "POST", "/v1/completions", body)
    status, _, raw = request(s.port, "POST", "/v1/completions", body)
    assert status == 200 and json.loads(raw)["usage"]["prompt_tokens_details"] is None
    assert metric(s.port, "vllm:prefix_cache_hits_total") == 8  # the metrics always count
    assert metric(s.port, "vllm:prefix_cache_queries_total") == 18


def test_ttft_grows_with_uncached_prompt_tokens(make_sim):
    s = make_sim(block_size=4, prefill_per_token=0.005)
    prompt = words(64)

    def first_token_after(text, headers=None):
        start = time.monotonic()
        with connect(s.port) as sock:
            sock.sendall(raw_request("/v1/completions", {
                "model": "tiny", "prompt": text, "max_tokens": 2, "stream": True}, headers))
            read_until(sock, lambda b: b'"text":' in b)
        return time.monotonic() - start

    cold = first_token_after(prompt)  # 64 uncached tokens: 0.32 s
    warm = first_token_after(prompt)  # 60 cached (15 blocks), 4 computed: 0.02 s
    assert cold >= 0.3 and warm < 0.15, (cold, warm)
    # The header overrides the flag per request: 4 uncached tokens at 0.1 s each.
    assert first_token_after(prompt, {"x-sim-prefill-per-token": "0.1"}) >= 0.4
    assert first_token_after(prompt, {"x-sim-prefill-per-token": "0"}) < 0.1


def test_cli_prefix_cache_flags():
    cfg = parse_args(["--block-size", "8", "--cache-blocks", "10", "--prefill-per-token",
                      "0.001", "--prompt-tokens-details"])
    assert (cfg.block_size, cfg.cache_blocks, cfg.prefill_per_token,
            cfg.prompt_tokens_details) == (8, 10, 0.001, True)
    d = parse_args([])
    assert (d.block_size, d.cache_blocks, d.prefill_per_token,
            d.prompt_tokens_details) == (16, 4096, 0.0, False)
    with pytest.raises(SystemExit):
        parse_args(["--block-size", "0"])


# -- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [500, 503])
def test_fault_status(sim, code):
    status, _, body = request(sim.port, "POST", "/v1/chat/completions",
                              chat_body(max_tokens=3, stream=True), {"x-sim-fault": str(code)})
    err = json.loads(body)["error"]
    assert status == code and err["code"] == code and err["message"]


def test_fault_die_after_stream(sim):
    with connect(sim.port) as s:
        s.sendall(raw_request("/v1/chat/completions", chat_body(max_tokens=10, stream=True),
                              {"x-sim-fault": "die-after", "x-sim-fault-after": "2",
                               "x-sim-itl": "0.01"}))
        data = read_to_eof(s)
    status, _, events, complete = stream_events(data)
    assert status == 200 and not complete
    assert [k for k, _ in events] == ["role", "content", "content"]


def test_fault_die_after_non_streaming(sim):
    with connect(sim.port) as s:
        s.sendall(raw_request("/v1/chat/completions", chat_body(max_tokens=10),
                              {"x-sim-fault": "die-after"}))
        status, headers, body = split_response(read_to_eof(s))
    assert status == 200 and 0 < len(body) < int(headers["content-length"])


def test_fault_error_event(sim):
    with connect(sim.port) as s:
        s.sendall(raw_request("/v1/chat/completions", chat_body(max_tokens=10, stream=True),
                              {"x-sim-fault": "error-event"}))
        status, _, events, complete = stream_events(read_until(s, is_complete_stream))
        assert status == 200 and complete
        assert [k for k, _ in events] == ["role"] + ["content"] * 3 + ["error", "done"]
        assert events[-2][1] == {"error": {
            "object": "error", "message": "simulated engine failure",
            "type": "InternalServerError", "param": None, "code": 500}}
        # The stream ended cleanly, so the connection is still good.
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert read_until(s, lambda b: b.endswith(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")


def test_fault_hang(sim):
    aborted = metric(sim.port, "sim:requests_aborted_total")
    with connect(sim.port) as s:
        s.sendall(raw_request("/v1/chat/completions", chat_body(max_tokens=3),
                              {"x-sim-fault": "hang"}))
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(1)
    assert wait_for(lambda: metric(sim.port, "sim:requests_aborted_total") == aborted + 1)


def test_fault_bad_framing(sim):
    with connect(sim.port) as s:
        s.sendall(raw_request("/v1/chat/completions", chat_body(max_tokens=10, stream=True),
                              {"x-sim-fault": "bad-framing", "x-sim-fault-after": "4"}))
        data = read_to_eof(s)
    _, _, body = split_response(data)
    chunks, complete, rest = split_chunks(body[:body.rindex(b"zz\r\n")])
    assert [event(c)[0] for c in chunks] == ["role"] + ["content"] * 4
    assert body.endswith(b"zz\r\n")
    with pytest.raises(ValueError):
        split_chunks(body)


# -- the command line ----------------------------------------------------------------------


def test_cli_listens_serves_and_stops_on_sigterm():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.sim", "--port", "0", "--name", "cli", "--fault", "503",
         "--tokens", "3"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.fullmatch(r"fleetproxy-sim listening on http://127\.0\.0\.1:(\d+) model=tiny\n",
                         line)
        assert m, line
        port = int(m.group(1))
        status, headers, _ = request(port, "POST", "/v1/chat/completions", chat_body())
        assert status == 503 and headers["x-sim-backend"] == "cli"
        status, _, body = request(port, "POST", "/v1/chat/completions", chat_body(),
                                  {"x-sim-fault": "none"})
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_event_writes_send_each_event_on_its_own(make_sim, monkeypatch):
    # The bench's streams without delays: vLLM writes every event on its own, so a proxy's
    # reads are per event (or what the kernel coalesced), not one read per stream.
    from proxy.sim import server

    writes = []
    real = server.Connection.write
    monkeypatch.setattr(server.Connection, "write", lambda self, data: (writes.append(data), real(self, data))[1])
    body = chat_body(max_tokens=8, stream=True)
    at_once, apart = make_sim(name="s"), make_sim(name="s", event_writes=True)
    events = exchange_stream(at_once.port, body)[2]
    assert len(writes) == 1
    del writes[:]
    assert exchange_stream(apart.port, body)[2] == events  # the same events, bytes alike
    assert len(writes) >= 8 and all(w.count(b"data: ") <= 2 for w in writes)  # the role event rides with the first token
    # Per request too (bench.ab's stream rows, one simulator for both): the header, either way.
    del writes[:]
    assert exchange_stream(at_once.port, body, {"x-sim-event-writes": "1"})[2] == events
    assert len(writes) >= 8
    del writes[:]
    assert exchange_stream(apart.port, body, {"x-sim-event-writes": "0"})[2] == events
    assert len(writes) == 1
