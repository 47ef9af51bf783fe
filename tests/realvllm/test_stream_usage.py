"""Issue 14 against real vLLM: a stream whose client did not ask for usage is counted (the proxy
adds stream_options.include_usage upstream) and the client still reads, byte for byte, the
stream vLLM sends without the option.

Each case is fetched twice on raw sockets, straight from vLLM and through the proxy (metrics on,
the default), with temperature 0 and a seed so both generate the same tokens. The two bodies
are compared as they came on the wire, chunk-size lines included, after exactly two
substitutions that stand for what legitimately differs between two requests: the value of
"id" (vLLM's request id: "chatcmpl-"/"cmpl-" + the X-Request-Id sent, two different ids of one
length here) and of "created" (a Unix time in seconds), each replaced by a run of the same
length, so chunk sizes are untouched.
Everything else must be equal, "system_fingerprint" on the finish event included.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

from conftest import metric  # tests/conftest.py

from .conftest import MODEL, regrouped, same_stream, sse_events

PROMPT = "Tell me about fleets of servers."
CASES = {
    "chat": ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
                                      "max_tokens": 8, "temperature": 0, "seed": 7, "stream": True}),
    "completions": ("/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 0,
                                        "seed": 7, "stream": True}),
}


def wire(port: int, path: str, body: dict, request_id: str) -> tuple[bytes, bytes]:
    """(head, body as it came on the wire) of one request on a fresh connection."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"X-Request-Id: %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                  % (path.encode(), request_id.encode(), len(data), data))
        got = b""
        while piece := s.recv(65536):
            got += piece
    head, _, rest = got.partition(b"\r\n\r\n")
    return head, rest


def aligned(body: bytes) -> bytes:
    """The body with each id and time overwritten in place: same lengths, still JSON."""
    body = re.sub(rb'(?<="id":")(?:chatcmpl|cmpl)-[^"]*', lambda m: b"I" * len(m.group()), body)
    return re.sub(rb'(?<="created":)\d+', lambda m: b"0" * len(m.group()), body)


@pytest.mark.parametrize("case", sorted(CASES))
def test_stream_without_usage_is_byte_identical_through_proxy_and_counted(vllm, proxy, case):
    path, body = CASES[case]
    admin = f"http://127.0.0.1:{proxy.admin_port}"
    before = metric(admin, "fleetproxy_tokens_total")
    runs = []

    def fetch():
        # vLLM names the request after X-Request-Id: two ids of one length.
        head_direct, direct = wire(vllm.port, path, body, f"usage-{case}-direct")
        head_via, via = wire(proxy.port, path, body, f"usage-{case}-proxy{len(runs)}")
        runs.append(1)
        assert head_direct.startswith(b"HTTP/1.1 200") and head_via.startswith(b"HTTP/1.1 200")
        assert b"transfer-encoding: chunked" in head_via.lower()
        # What include_usage would have changed is there to restore: the fingerprint on
        # the finish event and no usage event.
        assert b'"system_fingerprint":"vllm-' in direct and b'"usage"' not in direct
        return aligned(direct), aligned(via)

    same_stream(fetch, lambda wire_body: regrouped(sse_events(wire_body)))
    # Counted all the same: prompt + completion tokens from the usage event the proxy took out.
    completion = body["max_tokens"]
    assert metric(admin, "fleetproxy_tokens_total") - before >= completion + 1
