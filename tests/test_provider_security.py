"""External providers: our key is not everyone's key.

A provider only ever sees inference routes (an allow-list of method + path), in plain origin-form
(no dot-segments, encoded or not, no absolute-form), without the client's credentials, with only
the configured key; its URL must be https (plain http only to loopback) and its key variable must
be set when the config loads. And a provider never makes the fleet look ready: /health and
/readyz count the vLLM endpoints while there are any.
"""

import http.client
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, ScriptedBackend, free_port, start_proxy, wait_for
from proxy.config import ConfigError, build
from proxy.http.errors import ClientError
from proxy.routing.provider import CLIENT_CREDENTIALS, Adapter, adapter_for, provider_refusal
from proxy.routing.router import Router

KEY = "sk-provider-test-key"

# -- the allow-list and the target rules, sans-IO ----------------------------------------------

ALLOWED = [
    (b"POST", b"/v1/chat/completions"),
    (b"POST", b"/v1/completions"),
    (b"POST", b"/v1/responses"),
    (b"POST", b"/v1/embeddings"),
    (b"GET", b"/v1/models"),
    (b"GET", b"/v1/models/gpt-4o-mini"),
    (b"GET", b"/v1/models/meta-llama/Llama-3.1-8B"),  # IDs with an organization segment
    (b"GET", b"/v1/models/ft:gpt-4o:org:custom:id"),
    (b"POST", b"/v1/chat/completions?api-version=2024-10-21"),  # a query string stays
]

REFUSED = [
    # Not inference: what the key could read, delete or spend elsewhere.
    (b"POST", b"/v1/files", 403),
    (b"GET", b"/v1/files", 403),
    (b"POST", b"/v1/fine_tuning/jobs", 403),
    (b"POST", b"/v1/batches", 403),
    (b"GET", b"/v1/organization/api_keys", 403),
    (b"GET", b"/v1/chat/completions", 403),  # lists stored completions: other clients' prompts
    (b"DELETE", b"/v1/models/ft:gpt-4o:org:custom:id", 403),  # deletes a fine-tuned model
    (b"POST", b"/v1/models", 403),
    (b"GET", b"/v1/responses/resp_123", 403),
    (b"POST", b"/v1/chat/completions/", 403),
    (b"GET", b"/v1/models/", 403),
    (b"GET", b"/v1/models//x", 403),
    (b"POST", b"/tokenize", 403),  # vLLM's own routes are no provider's business
    (b"GET", b"/metrics", 403),
    (b"HEAD", b"/v1/models", 403),
    # Targets the provider would have to normalize: never sent.
    (b"POST", b"/v1/chat/../files", 400),
    (b"POST", b"/v1/./chat/completions", 400),
    (b"GET", b"/v1/models/..", 400),
    (b"GET", b"/v1/models/x/../../files", 400),
    (b"POST", b"/v1/%2e%2e/files", 400),
    (b"POST", b"/v1/chat/%2E%2e/completions", 400),
    (b"POST", b"/v1/chat/.%2e/files", 400),
    (b"POST", b"/v1%2fchat%2Fcompletions", 400),
    (b"POST", b"/v1\\chat\\completions", 400),
    (b"POST", b"/v1/chat/completions#x", 400),
    (b"POST", b"http://api.other.example/v1/chat/completions", 400),  # absolute-form
    (b"POST", b"//api.other.example/v1/chat/completions", 400),
    (b"OPTIONS", b"*", 400),
    (b"CONNECT", b"api.other.example:443", 400),
]


@pytest.mark.parametrize("method,target", ALLOWED)
def test_allowed_routes_go(method, target):
    assert provider_refusal(method, target) is None


@pytest.mark.parametrize("method,target,status", REFUSED)
def test_everything_else_is_refused(method, target, status):
    err = provider_refusal(method, target, "external provider openai")
    assert isinstance(err, ClientError) and err.status == status, (method, target, err)
    assert "openai" in err.message


def test_unknown_method_judges_the_path():
    """``adapt`` without the method (what the relay passes today) still refuses every path
    off the allow-list and every target the rules refuse."""
    assert provider_refusal(None, b"/v1/chat/completions") is None
    assert provider_refusal(None, b"/v1/models/x") is None
    assert provider_refusal(None, b"/v1/files").status == 403
    assert provider_refusal(None, b"/v1/chat/../files").status == 400


def test_vllm_endpoints_are_not_fenced():
    adapter = Adapter(b"/team-a")
    assert adapter.refusal(b"POST", b"/v1/files") is None
    assert adapter.adapt(b"/tokenize", [(b"authorization", b"Bearer c")], b"")[:2] == (
        b"/team-a/tokenize",
        [(b"authorization", b"Bearer c")],
    )


# -- credentials, sans-IO -----------------------------------------------------------------------

CLIENT_HEADERS = [
    (b"authorization", b"Bearer client-secret"),
    (b"api-key", b"client-azure-key"),
    (b"x-api-key", b"client-x-key"),
    (b"cookie", b"session=client-cookie"),
    (b"openai-organization", b"org-client"),
    (b"openai-project", b"proj-client"),
    (b"content-type", b"application/json"),
    (b"x-session-id", b"abc"),
]


def router_for(raw):
    return Router(build(raw), None)


def test_client_credentials_are_stripped_and_only_our_key_is_sent(monkeypatch):
    monkeypatch.setenv("FP_TEST_PROVIDER_SEC_KEY", KEY)
    r = router_for(
        {
            "providers": [
                {"name": "p", "url": "https://api.example.com/v1", "api_key_env": "FP_TEST_PROVIDER_SEC_KEY"}
            ]
        }
    )
    adapter = r.find("p").adapter
    target, headers, _ = adapter.adapt(b"/v1/chat/completions", CLIENT_HEADERS, b"{}")
    assert target == b"/v1/chat/completions"
    assert headers == [(b"content-type", b"application/json"), (b"x-session-id", b"abc")]
    assert adapter.extra == ((b"authorization", b"Bearer " + KEY.encode()),)
    assert {n for n, _ in CLIENT_HEADERS} - {b"content-type", b"x-session-id"} == CLIENT_CREDENTIALS


def test_a_keyless_provider_still_strips_and_fences():
    """No key, no base path, no model: it used to get no adapter at all, and every request went
    to it as it came, the client's Authorization included."""
    r = router_for({"providers": [{"name": "p", "url": "https://api.example.com"}]})
    adapter = r.find("p").adapter
    assert adapter is not None and adapter.extra == ()
    assert adapter.adapt(b"/v1/embeddings", CLIENT_HEADERS, b"")[1] == CLIENT_HEADERS[-2:]
    assert adapter.refusal(b"POST", b"/v1/files").status == 403
    with pytest.raises(ClientError):
        adapter.adapt(b"/v1/files", CLIENT_HEADERS, b"")


def test_adapt_never_returns_a_refused_request():
    """The last line of defence in the one place that writes a provider's request."""
    adapter = adapter_for(
        build({"providers": [{"name": "p", "url": "https://h.example/openai/v1"}]}).providers[0], True
    )
    with pytest.raises(ClientError) as info:
        adapter.adapt(b"/v1/../admin", [], b"")
    assert info.value.status == 400
    with pytest.raises(ClientError) as info:
        adapter.adapt(b"/v1/files", [], b"", method=b"POST")
    assert info.value.status == 403
    with pytest.raises(ClientError):
        adapter.adapt(b"/v1/models/x", [], b"", method=b"DELETE")
    assert adapter.adapt(b"/v1/models/x", [], b"", method=b"GET")[0] == b"/openai/v1/models/x"


# -- config: https, and a key variable that is set ----------------------------------------------


@pytest.mark.parametrize(
    "provider,env,message",
    [
        ({"url": "http://api.example.com/v1"}, {}, "must be https://"),
        ({"url": "http://10.0.0.7:8000/v1"}, {}, "must be https://"),
        ({"url": "https://api.example.com/v1", "api_key_env": "FP_TEST_UNSET_KEY"}, {}, "FP_TEST_UNSET_KEY"),
        (
            {"url": "https://api.example.com/v1", "api_key_env": "FP_TEST_EMPTY_KEY"},
            {"FP_TEST_EMPTY_KEY": ""},
            "FP_TEST_EMPTY_KEY",
        ),
        (
            {"url": "https://api.example.com/v1", "api_key_env": "FP_TEST_CRLF_KEY"},
            {"FP_TEST_CRLF_KEY": "sk-x\r\nx-evil: 1"},
            "control",
        ),
    ],
)
def test_config_refuses_plain_http_and_missing_keys(monkeypatch, provider, env, message):
    monkeypatch.delenv("FP_TEST_UNSET_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        build({"providers": [{"name": "ext", **provider}]}, "providers.yaml")
    text = str(info.value)
    assert "providers.yaml" in text and "$.providers[0]" in text and message in text
    if "api_key_env" in provider:
        assert "api_key_env" in text


def test_cli_refuses_to_start_without_the_key(tmp_path):
    path = tmp_path / "p.yaml"
    provider = {"name": "ext", "url": "https://api.example.com/v1", "api_key_env": "FP_TEST_NEVER_SET_KEY"}
    path.write_text(json.dumps({"providers": [provider]}))
    env = {k: v for k, v in os.environ.items() if k != "FP_TEST_NEVER_SET_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == 2 and "FP_TEST_NEVER_SET_KEY" in proc.stderr and str(path) in proc.stderr


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/v1", "http://127.8.9.10:9", "http://localhost:9/v1", "http://[::1]:9/v1"]
)
def test_plain_http_to_loopback_is_accepted(url):
    """A local egress sidecar (or a test double): the traffic never leaves the machine."""
    assert build({"providers": [{"name": "ext", "url": url}]}).providers[0].url == url


# -- end to end: what reaches a provider --------------------------------------------------------


class CountingBackend(ScriptedBackend):
    """A ScriptedBackend that also counts every connection accepted, used or not."""

    def __init__(self, script):
        self.accepted = 0
        super().__init__(script)

    def _serve(self, conn):
        self.accepted += 1
        super()._serve(conn)


def chat_reply(request, sock):
    body = b'{"id":"x","object":"chat.completion","choices":[]}'
    sock.sendall(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (len(body), body)
    )


@pytest.fixture
def fenced(tmp_path):
    """A proxy whose model "ext" is served by a provider (a scripted server on loopback), with a
    vLLM cluster for everything else."""
    provider = CountingBackend(chat_reply)
    vllm = ScriptedBackend(chat_reply)
    cfg = {
        "backends": [vllm.url],
        "providers": [
            {"name": "ext", "url": provider.url + "/v1", "models": ["ext"], "api_key_env": "FP_TEST_E2E_KEY"}
        ],
    }
    path = tmp_path / "fenced.yaml"
    path.write_text(json.dumps(cfg))
    proxy = start_proxy([], "--config", str(path), env={"FP_TEST_E2E_KEY": KEY})
    yield proxy, provider, vllm
    proxy.stop()
    provider.close()
    vllm.close()


def send(port, method, target, body=None, headers=()):
    head = b"%s %s HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n" % (method, target)
    for name, value in headers:
        head += name + b": " + value + b"\r\n"
    data = json.dumps(body).encode() if body is not None else b""
    head += b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(data)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return int(out.split(b" ", 2)[1]), out


def test_provider_sees_only_our_key(fenced):
    proxy, provider, vllm = fenced
    status, _ = send(
        proxy.port, b"POST", b"/v1/chat/completions", {"model": "ext", "messages": []}, CLIENT_HEADERS
    )
    assert status == 200
    (sent,) = provider.requests
    head = sent.split(b"\r\n\r\n", 1)[0].lower()
    assert b"authorization: bearer " + KEY.encode().lower() in head
    assert head.count(b"authorization:") == 1
    for secret in (
        b"client-secret",
        b"client-azure-key",
        b"client-x-key",
        b"client-cookie",
        b"org-client",
        b"proj-client",
    ):
        assert secret not in sent, secret
    for name in (b"api-key:", b"x-api-key:", b"cookie:", b"openai-organization:", b"openai-project:"):
        assert b"\r\n" + name not in head, name
    # A vLLM endpoint is the fleet's own: the client's fields go to it as they came.
    status, _ = send(
        proxy.port, b"POST", b"/v1/chat/completions", {"model": "tiny", "messages": []}, CLIENT_HEADERS
    )
    assert status == 200 and b"client-secret" in vllm.requests[-1]


@pytest.mark.parametrize(
    "method,target",
    [(b"POST", b"/v1/files"), (b"GET", b"/v1/organization/api_keys"), (b"POST", b"/v1/chat/%2e%2e/files")],
)
def test_refused_routes_never_reach_the_provider(fenced, method, target):
    proxy, provider, _ = fenced
    status, reply = send(proxy.port, method, target, {"model": "ext"})
    assert status >= 400 and provider.requests == []
    assert KEY.encode() not in reply


def test_refused_route_is_a_403_without_contacting_the_provider(fenced):
    proxy, provider, _ = fenced
    status, reply = send(proxy.port, b"POST", b"/v1/files", {"model": "ext"})
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert status == 403 and body["error"]["type"] == "permission_error" and "ext" in body["error"]["message"]
    status, _ = send(proxy.port, b"POST", b"/v1/chat/../files", {"model": "ext"})
    assert status == 400
    assert provider.accepted == 0


def test_fallback_onto_a_provider_refuses_off_list_routes_too(tmp_path):
    """A vLLM route (/tokenize) whose cluster fails over to a provider: the retry lands on
    the provider, which is asked first and refuses (403), still without a connection."""
    provider = CountingBackend(chat_reply)
    path = tmp_path / "fallback.yaml"
    path.write_text(
        json.dumps(
            {
                "backends": [f"http://127.0.0.1:{free_port()}"],  # nothing listens there
                "providers": [{"name": "ext", "url": provider.url + "/v1"}],
                "fallback": ["ext"],
                "retry": {"min_per_second": 1000},
            }
        )
    )
    proxy = start_proxy([], "--config", str(path))
    try:
        status, _ = send(proxy.port, b"POST", b"/tokenize", {"model": "tiny", "prompt": "x"})
        assert status == 403 and provider.accepted == 0
        status, _ = send(proxy.port, b"POST", b"/v1/chat/completions", {"model": "tiny", "messages": []})
        assert status == 200 and len(provider.requests) == 1
    finally:
        proxy.stop()
        provider.close()


# -- readiness: providers do not make the fleet ready -------------------------------------------


def test_any_healthy_counts_vllm_endpoints_only():
    r = router_for(
        {
            "backends": ["http://a:1", "http://b:1"],
            "providers": [{"name": "ext", "url": "https://api.example.com/v1"}],
            "fallback": ["ext"],
        }
    )
    assert r.any_healthy()
    for label in ("a:1", "b:1"):
        r.find(label).set_drained(True)
    assert r.find("ext").eligible
    assert not r.any_healthy()  # only the paid fallback is left: not ready
    r.find("a:1").set_drained(False)
    assert r.any_healthy()
    # A fleet of providers alone: they are what it serves with.
    alone = router_for({"providers": [{"name": "ext", "url": "https://api.example.com/v1"}]})
    assert alone.any_healthy()


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_health_and_readyz_say_503_when_only_a_provider_is_up(tmp_path):
    provider = ScriptedBackend(chat_reply)
    cfg = {
        "backends": [f"http://127.0.0.1:{free_port()}"],  # nothing listens there
        "providers": [{"name": "ext", "url": provider.url + "/v1"}],
        "fallback": ["ext"],
        "health": {"interval": 0.1, "timeout": 0.5, "unhealthy_threshold": 1},
    }
    path = tmp_path / "ready.yaml"
    path.write_text(json.dumps(cfg))
    proxy = start_proxy([], "--config", str(path))
    try:
        assert wait_for(lambda: get(proxy.port, "/health") == 503, timeout=5)
        assert get(proxy.admin_port, "/readyz") == 503
        # The provider still serves as the fallback it is.
        status, _ = send(proxy.port, b"POST", b"/v1/chat/completions", {"model": "tiny", "messages": []})
        assert status == 200 and len(provider.requests) == 1
    finally:
        proxy.stop()
        provider.close()
