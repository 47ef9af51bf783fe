"""Comparing a simulator's answer with a real vLLM's, byte level up to JSON shape.

Used by tests/test_sim_fidelity.py (against recordings) and by
tests/realvllm/test_sim_vs_real.py (against a live server). What must match: the
status, the header names in order (the date, the server's name and the simulator's
own x-sim-backend aside), one SSE event per HTTP chunk, the sequence of event kinds,
the JSON shape of every chunk and body (keys in order, the type of every value), and
for refusals the whole body. What may differ: generated text, ids, timestamps and
token counts (the simulator counts words, not BPE tokens).
"""

from __future__ import annotations

import json

IGNORED_HEADERS = {"date", "x-sim-backend"}


def parse(raw: bytes):
    """(status, [(name, value)], body bytes or [chunk payloads], complete)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in
               (line.partition(":") for line in lines[1:])]
    status = int(lines[0].split()[1])
    if ("transfer-encoding", "chunked") not in headers:
        return status, headers, body, True
    chunks, pos = [], 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol], 16)
        if size == 0:
            return status, headers, chunks, body[eol:] == b"\r\n\r\n"
        chunks.append(body[eol + 2: eol + 2 + size])
        assert body[eol + 2 + size: eol + 4 + size] == b"\r\n"
        pos = eol + 4 + size


def event(payload: bytes):
    """(kind, object) of one chunk, which must hold exactly one `data:` event."""
    assert payload.startswith(b"data: ") and payload.endswith(b"\n\n"), payload
    assert payload.count(b"\n\n") == 1 and b"\nevent:" not in payload, "more than one event in a chunk"
    data = payload[6:-2]
    if data == b"[DONE]":
        return "done", None
    obj = json.loads(data)
    if "error" in obj:
        return "error", obj
    if obj["choices"] == []:
        return "usage", obj
    choice = obj["choices"][0]
    if "role" in choice.get("delta", {}):
        return "role", obj
    return ("finish" if choice["finish_reason"] is not None else "content"), obj


def shape(value):
    """Keys in order and value types, recursively; a list by its first element."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def header_names(headers) -> list[str]:
    return [k for k, _ in headers if k not in IGNORED_HEADERS]


def assert_same_answer(real_raw: bytes, sim_raw: bytes, method: str = "POST") -> None:
    """The simulator's raw response answers like the real one (see the module docstring)."""
    r_status, r_headers, r_body, r_complete = parse(real_raw)
    s_status, s_headers, s_body, s_complete = parse(sim_raw)
    assert s_status == r_status
    assert header_names(s_headers) == header_names(r_headers)
    assert dict(s_headers)["server"] == "fleetproxy-sim"
    if isinstance(r_body, list):  # a stream: one event per chunk, same kinds, same shapes
        assert isinstance(s_body, list) and s_complete and r_complete
        r_events, s_events = [event(c) for c in r_body], [event(c) for c in s_body]
        assert [k for k, _ in s_events] == [k for k, _ in r_events]
        for (kind, r_obj), (_, s_obj) in zip(r_events, s_events):
            assert shape(s_obj) == shape(r_obj), kind
        return
    if method == "HEAD" or not r_body:
        assert s_body == r_body
        return
    if r_status >= 400:  # refusals are mirrored word for word
        assert json.loads(s_body) == json.loads(r_body)
        return
    assert shape(json.loads(s_body)) == shape(json.loads(r_body))
