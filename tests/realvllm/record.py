"""Record what a live vLLM answers to the conformance cases, for tests/test_sim_fidelity.py.

    python tests/realvllm/record.py PORT FLAVOUR

FLAVOUR names how that vLLM was started (start.sh's defaults plus):
  details  --enable-prompt-tokens-details
  rid      --enable-request-id-headers
Each case's raw response goes to recorded/<FLAVOUR>/<case>.http and its request to
recorded/cases.json, so the fidelity test can replay the very same bytes at the
simulator. Re-record when vLLM's version in ../shared/realvllm changes.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

RECORDED = Path(__file__).resolve().parent / "recorded"
JSON = {"content-type": "application/json"}
LONG = " ".join(["hello world this is a long prompt"] * 60)  # ~670 tokens: 5 full blocks
MSG = [{"role": "user", "content": "hi there"}]


def post(path, body, headers=None):
    return {"method": "POST", "path": path, "headers": {**JSON, **(headers or {})},
            "body": body}


def get(path, headers=None, method="GET"):
    return {"method": method, "path": path, "headers": headers or {}, "body": None}


CASES = {
    "details": {
        "chat": post("/v1/chat/completions", {"model": "tiny", "messages": MSG, "max_tokens": 4}),
        "chat_stream": post("/v1/chat/completions", {
            "model": "tiny", "messages": MSG, "max_tokens": 3, "stream": True}),
        "chat_stream_usage": post("/v1/chat/completions", {
            "model": "tiny", "messages": MSG, "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}),
        "chat_stream_continuous": post("/v1/chat/completions", {
            "model": "tiny", "messages": MSG, "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}),
        "chat_long_first": post("/v1/chat/completions", {
            "model": "tiny", "messages": [{"role": "user", "content": LONG}], "max_tokens": 2}),
        "chat_long_again": post("/v1/chat/completions", {
            "model": "tiny", "messages": [{"role": "user", "content": LONG}], "max_tokens": 2}),
        "chat_long_stream": post("/v1/chat/completions", {
            "model": "tiny", "messages": [{"role": "user", "content": LONG}], "max_tokens": 2,
            "stream": True, "stream_options": {"include_usage": True}}),
        "chat_no_model": post("/v1/chat/completions", {"messages": MSG, "max_tokens": 2}),
        "chat_stop": post("/v1/chat/completions", {
            "model": "tiny", "messages": MSG, "max_tokens": 8, "temperature": 0,
            "stop": [" "]}),
        "cmpl": post("/v1/completions", {"model": "tiny", "prompt": "one two three",
                                         "max_tokens": 3}),
        "cmpl_stream": post("/v1/completions", {
            "model": "tiny", "prompt": "one two three", "max_tokens": 2, "stream": True}),
        "cmpl_stream_usage": post("/v1/completions", {
            "model": "tiny", "prompt": "one two three", "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}),
        "cmpl_stream_continuous": post("/v1/completions", {
            "model": "tiny", "prompt": "one two three", "max_tokens": 2, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}),
        "cmpl_long_stream": post("/v1/completions", {
            "model": "tiny", "prompt": LONG, "max_tokens": 2, "stream": True,
            "stream_options": {"include_usage": True}}),
        "load_text": post("/v1/chat/completions", {
            "model": "tiny", "messages": MSG, "max_tokens": 1},
            {"endpoint-load-metrics-format": "text"}),
        "load_json": post("/v1/chat/completions", {
            "model": "tiny", "messages": MSG, "max_tokens": 1},
            {"endpoint-load-metrics-format": "json"}),
        "load_stream": post("/v1/chat/completions", {
            "model": "tiny", "messages": MSG, "max_tokens": 1, "stream": True},
            {"endpoint-load-metrics-format": "text"}),
        "request_id_not_echoed": post("/v1/chat/completions", {
            "model": "tiny", "messages": MSG, "max_tokens": 1}, {"x-request-id": "abc-1"}),
        "models": get("/v1/models"),
        "health": get("/health"),
        "version": get("/version"),
        "tokenize": post("/tokenize", {"model": "tiny", "prompt": "a b c"}),
        "tokenize_chat": post("/tokenize", {"model": "tiny", "messages": MSG}),
        "tokenize_strs": post("/tokenize", {"model": "tiny", "prompt": "a b c",
                                            "return_token_strs": True}),
        "detokenize": post("/detokenize", {"model": "tiny", "tokens": []}),
        # refusals: the simulator must answer these byte for byte
        "err_bad_json": post("/v1/chat/completions", "{not json"),
        "err_no_messages": post("/v1/chat/completions", {"model": "tiny"}),
        "err_messages_str": post("/v1/chat/completions", {"model": "tiny", "messages": "hi"}),
        "err_empty_messages": post("/v1/chat/completions", {"model": "tiny", "messages": []}),
        "err_bad_model": post("/v1/chat/completions", {"model": "big", "messages": MSG}),
        "err_bad_model_cmpl": post("/v1/completions", {"model": "big", "prompt": "x",
                                                       "max_tokens": 2}),
        "err_max_tokens_0": post("/v1/chat/completions", {"model": "tiny", "messages": MSG,
                                                          "max_tokens": 0}),
        "err_max_tokens_neg": post("/v1/completions", {"model": "tiny", "prompt": "x",
                                                       "max_tokens": -1}),
        "err_max_tokens_float": post("/v1/completions", {"model": "tiny", "prompt": "x",
                                                         "max_tokens": 1.5}),
        "err_max_tokens_str": post("/v1/chat/completions", {"model": "tiny", "messages": MSG,
                                                            "max_tokens": "a"}),
        "err_too_many_tokens": post("/v1/completions", {"model": "tiny", "prompt": "x",
                                                        "max_tokens": 5000}),
        "err_prompt_too_long": post("/v1/completions", {"model": "tiny", "prompt": "x " * 1100,
                                                        "max_tokens": 2}),
        "err_no_prompt": post("/v1/completions", {"model": "tiny", "max_tokens": 2}),
        "err_tokenize_nothing": post("/tokenize", {"model": "tiny"}),
        "err_no_content_type": {**post("/v1/completions", {"model": "tiny", "prompt": "x",
                                                            "max_tokens": 1}), "headers": {}},
        "err_text_plain": post("/v1/completions", {"model": "tiny", "prompt": "x",
                                                   "max_tokens": 1},
                               {"content-type": "text/plain"}),
        "err_not_found": get("/nope"),
        "err_get_chat": get("/v1/chat/completions"),
        "err_head_health": get("/health", method="HEAD"),
        "err_post_health": post("/health", {}),
    },
    "rid": {
        "rid_chat": post("/v1/chat/completions", {"model": "tiny", "messages": MSG,
                                                  "max_tokens": 1}, {"x-request-id": "abc-5"}),
        "rid_stream": post("/v1/chat/completions", {"model": "tiny", "messages": MSG,
                                                    "max_tokens": 1, "stream": True},
                           {"x-request-id": "abc-6"}),
        "rid_cmpl": post("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1},
                         {"x-request-id": "abc-7"}),
        "rid_generated": post("/v1/chat/completions", {"model": "tiny", "messages": MSG,
                                                       "max_tokens": 1}),
        "rid_health": get("/health", {"x-request-id": "abc-8"}),
        "rid_not_found": get("/nope", {"x-request-id": "abc-9"}),
        "rid_error": post("/v1/chat/completions", {"model": "big", "messages": MSG},
                          {"x-request-id": "abc-10"}),
    },
}


def request_bytes(case: dict) -> bytes:
    body = case["body"]
    data = b"" if body is None else (body.encode() if isinstance(body, str)
                                     else json.dumps(body).encode())
    lines = [f"{case['method']} {case['path']} HTTP/1.1", "host: 127.0.0.1",
             "connection: close"]
    lines += [f"{k}: {v}" for k, v in case["headers"].items()]
    if body is not None:
        lines.append(f"content-length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def exchange(port: int, case: dict, timeout: float = 60.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request_bytes(case))
        out = b""
        while data := s.recv(65536):
            out += data
    return out


def main(argv: list[str]) -> int:
    port, flavour = int(argv[1]), argv[2]
    folder = RECORDED / flavour
    folder.mkdir(parents=True, exist_ok=True)
    for name, case in CASES[flavour].items():
        (folder / f"{name}.http").write_bytes(exchange(port, case))
    (RECORDED / "cases.json").write_text(json.dumps(CASES, indent=1) + "\n")
    print(f"recorded {len(CASES[flavour])} cases in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
