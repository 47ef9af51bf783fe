"""Tenants through a real supervised proxy (issue 15): the openai SDK and raw http.client
against simulators; keys, models, limits shared by workers, honest Retry-After, reloads."""

import http.client
import json
import signal
import time

import openai
import pytest

from conftest import ScriptedBackend, start_proxy, start_sim, wait_for
from proxy.tenants.identify import hash_key

KEY_A = "sk-a-" + "1" * 24  # generous limits, models: [tiny]
KEY_SLOW = "sk-slow-" + "2" * 24  # 2 requests at once, then one a second
KEY_TINY = "sk-tiny-" + "3" * 24  # 3 requests, then one per 100 s
KEY_ONE = "sk-one-" + "4" * 24  # one request in flight at a time
KEY_TOK = "sk-tok-" + "5" * 24  # 1000 tokens a minute
KEY_NEW = "sk-new-" + "6" * 24  # added by a reload
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def tenants_yaml(sim_url, extra_keys=()):
    def tenant(name, key, **limits):
        return {"name": name, "keys": [hash_key(key), *[hash_key(k) for k in extra_keys if name == "tiny"]], **limits}

    return json.dumps({
        "backends": [sim_url],
        "tenants": {
            "list": [
                tenant("a", KEY_A, models=["tiny"], requests_per_second=1000),
                tenant("slow", KEY_SLOW, requests_per_second=1, burst_requests=2),
                tenant("tiny", KEY_TINY, requests_per_second=0.01, burst_requests=3),
                tenant("one", KEY_ONE, max_concurrent=1),
                tenant("tok", KEY_TOK, tokens_per_minute=1000),
            ],
        },
    })


def post(port, body, key=None, path="/v1/chat/completions", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = {"content-type": "application/json", **(headers or {})}
    if key:
        h["authorization"] = "Bearer " + key
    conn.request("POST", path, json.dumps(body), h)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def client(port, key, max_retries=0):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=max_retries)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    sim = start_sim("--ttft", "0.01", "--itl", "0.002")
    path = tmp_path_factory.mktemp("tenants") / "fleet.yaml"
    path.write_text(tenants_yaml(sim.url))
    proxy = start_proxy([], "--config", str(path), "--workers", "2")
    yield sim, proxy, path
    proxy.stop()
    sim.stop()


def test_no_key_is_401_in_openai_shape(fleet):
    _, proxy, _ = fleet
    status, headers, data = post(proxy.port, CHAT)
    assert status == 401
    error = json.loads(data)["error"]
    assert set(error) == {"message", "type", "param", "code"} and "API key" in error["message"]
    with pytest.raises(openai.AuthenticationError):
        client(proxy.port, "sk-wrong-key").chat.completions.create(**CHAT)


def test_health_needs_no_key(fleet):
    _, proxy, _ = fleet
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200


def test_a_key_serves_its_models_with_rate_limit_headers(fleet):
    _, proxy, _ = fleet
    raw = client(proxy.port, KEY_A).chat.completions.with_raw_response.create(**CHAT)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) >= 998
    assert raw.headers["x-ratelimit-reset-requests"].endswith("ms")
    for api_header in ("api-key", "x-api-key"):  # Azure- and Anthropic-style clients
        status, _, _ = post(proxy.port, CHAT, headers={api_header: KEY_A})
        assert status == 200


def test_a_model_the_tenant_may_not_use_is_404(fleet):
    _, proxy, _ = fleet
    with pytest.raises(openai.NotFoundError) as err:
        client(proxy.port, KEY_A).chat.completions.create(**{**CHAT, "model": "other"})
    assert "do not have access" in str(err.value)


def test_over_the_limit_429_and_waiting_retry_after_succeeds(fleet):
    _, proxy, _ = fleet
    statuses = [post(proxy.port, CHAT, KEY_SLOW) for _ in range(3)]
    assert [s for s, _, _ in statuses[:2]] == [200, 200]
    status, headers, data = statuses[2]
    assert status == 429 and json.loads(data)["error"]["code"] == 429
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-limit-requests"] == "2"
    wait_ms = int(headers["retry-after-ms"])
    assert 0 < wait_ms <= 1000 and int(headers["retry-after"]) == 1
    time.sleep(wait_ms / 1000)
    assert post(proxy.port, CHAT, KEY_SLOW)[0] == 200  # honest: waiting that long is enough


def test_the_sdk_reads_the_429_and_its_own_retry_honours_retry_after(fleet):
    _, proxy, _ = fleet
    c = client(proxy.port, KEY_SLOW)
    while True:  # spend the bucket
        try:
            c.chat.completions.create(**CHAT)
        except openai.RateLimitError as err:
            assert err.response.headers["retry-after"]
            break
    # The SDK retries a 429 after retry-after(-ms): with one retry allowed, it gets through.
    assert client(proxy.port, KEY_SLOW, max_retries=1).chat.completions.create(**CHAT).choices


def test_limits_are_shared_by_the_workers(fleet):
    _, proxy, _ = fleet
    # Fresh connections spread over both workers; 3 in the bucket, one more per 100 s.
    statuses = [post(proxy.port, CHAT, KEY_TINY)[0] for _ in range(8)]
    assert sorted(statuses) == [200] * 3 + [429] * 5


def test_concurrency_limit_then_release(fleet):
    _, proxy, _ = fleet
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps({**CHAT, "max_tokens": 400, "stream": True}),
                 {"content-type": "application/json", "authorization": "Bearer " + KEY_ONE})
    resp = conn.getresponse()  # its head arrived: the stream is admitted and in flight
    assert resp.status == 200 and resp.getheader("x-ratelimit-limit-requests") is None
    status, headers, _ = post(proxy.port, CHAT, KEY_ONE)
    assert status == 429 and headers["retry-after"] == "1"
    assert resp.read().rstrip().endswith(b"data: [DONE]")
    conn.close()
    assert wait_for(lambda: post(proxy.port, CHAT, KEY_ONE)[0] == 200)  # the stream's finish released it


def test_tokens_are_corrected_from_usage(fleet):
    _, proxy, _ = fleet
    body = {**CHAT, "max_tokens": 100}
    status, first, _ = post(proxy.port, body, KEY_TOK)
    assert status == 200
    estimate = (len(json.dumps(body)) + 3) // 4
    assert int(first["x-ratelimit-remaining-tokens"]) <= 1000 - estimate + 2
    usage = 0
    status, second, data = post(proxy.port, body, KEY_TOK)
    usage = json.loads(data)["usage"]["total_tokens"]
    assert usage > estimate + 50  # 100 completion tokens, which the estimate cannot know
    # The second admission saw the first request charged its usage, not its estimate
    # (a minute of this limit refills 1000 tokens: far less than 50 in these few ms),
    # whichever worker took it: the limits see a request end before its client does (relay).
    assert int(second["x-ratelimit-remaining-tokens"]) < 1000 - 2 * estimate - 50


def test_the_key_never_reaches_a_vllm_backend_and_the_tier_does(tmp_path):
    answer = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}'
    backend = ScriptedBackend(lambda req, sock: sock.sendall(answer))
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps({
        "clusters": [{"name": "llm", "backends": [backend.url]}],
        "tenants": {"priority_clusters": ["llm"], "default": "anon",
                    "list": [{"name": "a", "keys": [hash_key(KEY_A)], "tier": 7}, {"name": "anon", "tier": 9}]},
    }))
    proxy = start_proxy([], "--config", str(path))
    try:
        assert post(proxy.port, {**CHAT, "priority": -100}, KEY_A, headers={"x-api-key": KEY_A})[0] == 200
        assert post(proxy.port, CHAT)[0] == 200
        first, second = backend.requests[-2:]
        assert KEY_A.encode() not in first and b"authorization" not in first.lower()
        body = json.loads(first.partition(b"\r\n\r\n")[2])
        assert body["priority"] == 7 and body["messages"] == CHAT["messages"]  # the tenant's, not the client's
        assert json.loads(second.partition(b"\r\n\r\n")[2])["priority"] == 9
    finally:
        proxy.stop()
        backend.close()


def test_without_tenants_nothing_changes(sim):
    proxy = start_proxy([sim])
    try:
        status, headers, _ = post(proxy.port, CHAT, "any-key")
        assert status == 200 and not any(h.startswith("x-ratelimit") for h in headers)
    finally:
        proxy.stop()


def test_reload_adds_a_key_and_keeps_what_was_spent(fleet):
    _, proxy, path = fleet
    sim_url = json.loads(path.read_text())["backends"][0]
    while post(proxy.port, CHAT, KEY_TINY)[0] == 200:  # the tiny tenant's bucket is empty
        pass
    path.write_text(tenants_yaml(sim_url, extra_keys=[KEY_NEW]))
    generation = proxy.admin("/admin/workers")[1]["generation"]
    proxy.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: proxy.admin("/admin/workers")[1]["generation"] == generation + 1, timeout=15)
    assert post(proxy.port, CHAT, KEY_NEW)[0] == 429  # same tenant, same (empty) bucket
    assert post(proxy.port, CHAT, KEY_TINY)[0] == 429
    assert post(proxy.port, CHAT, KEY_A)[0] == 200
