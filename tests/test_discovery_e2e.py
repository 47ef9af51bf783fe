"""End to end: a supervised proxy (two workers) whose only cluster is discovered from a fake
Kubernetes API (tests/k8s_fake.py), with simulators as the pods. Requests are served by the
discovered members; a member removed mid-stream finishes its stream; /admin/backends says
where each member came from."""

import http.client
import json

import pytest

from conftest import start_proxy, start_sim, wait_for
from k8s_fake import FakeKube, endpoint_slice

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def post(port, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    return conn, resp


def members(proxy):
    status, state = proxy.admin("/admin/backends")
    return {b["name"]: b["source"] for b in state.get("backends", [])} if status == 200 else {}


@pytest.fixture
def kube():
    api = FakeKube()
    yield api
    api.close()


def test_discovered_members_serve_and_a_removed_member_finishes_its_stream(kube, tmp_path):
    a = start_sim("--name", "a", "--itl", "0.05")
    b = start_sim("--name", "b")
    proxy = None
    try:
        kube.put_slice(endpoint_slice("vllm-a", "vllm", [("127.0.0.1", True, "pod-a")], port=a.port))
        kube.put_slice(endpoint_slice("vllm-b", "vllm", [("127.0.0.1", False, "pod-b")], port=b.port))
        config = tmp_path / "fleetproxy.yaml"
        config.write_text(json.dumps({
            "clusters": [{"name": "llm", "discovery": {"kubernetes": {
                "service": "vllm", "namespace": "ns", "api": kube.url, "token_file": str(tmp_path / "none"),
                "retry_min": 0.05, "retry_max": 0.2,
            }}}],
            "health": {"interval": 0.2},
        }))  # JSON is YAML
        proxy = start_proxy([], "--config", str(config), "--workers", "2")
        source = "k8s:ns/vllm"
        assert wait_for(lambda: members(proxy) == {f"127.0.0.1:{a.port}": source}, timeout=15)
        assert wait_for(lambda: proxy.admin("/readyz")[0] == 200, timeout=10)
        for _ in range(4):  # both workers' routers serve it (connections spread by the kernel)
            conn, resp = post(proxy.port, BODY)
            assert resp.status == 200 and resp.getheader("x-sim-backend") == "a"
            resp.read()
            conn.close()

        conn, resp = post(proxy.port, {**BODY, "stream": True, "max_tokens": 40})
        assert resp.status == 200 and resp.getheader("x-sim-backend") == "a"
        first = resp.readline()
        assert first.startswith(b"data: ")
        # Pod a goes (its slice deleted), pod b becomes ready: mid-stream.
        kube.delete_slice("vllm-a")
        kube.put_slice(endpoint_slice("vllm-b", "vllm", [("127.0.0.1", True, "pod-b")], port=b.port))
        assert wait_for(lambda: members(proxy) == {f"127.0.0.1:{b.port}": source}, timeout=15)
        rest = resp.read()
        conn.close()
        assert rest.rstrip().endswith(b"data: [DONE]")  # the stream on the removed member finished
        assert rest.count(b'"content":') >= 39
        for _ in range(4):
            conn, resp = post(proxy.port, BODY)
            assert resp.status == 200 and resp.getheader("x-sim-backend") == "b"
            resp.read()
            conn.close()
        status, state = proxy.admin("/admin/backends")
        assert all(b["source"] == source for b in state["backends"])
    finally:
        if proxy is not None:
            proxy.stop()
        a.stop()
        b.stop()
