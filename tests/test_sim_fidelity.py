"""The simulator held against bytes recorded from a real vLLM 0.32 (CPU build).

Two sources, both replayed without a vLLM:
- tests/data/vllm/: one streamed chat completion, one whole one, /metrics.
- tests/realvllm/recorded/: every case in tests/realvllm/record.py, recorded from live
  servers started with --enable-prompt-tokens-details ("details") or
  --enable-request-id-headers ("rid"). Each request is sent to a simulator started
  with the matching flags, byte for byte as it was sent to vLLM.

What must match and what may differ: tests/realvllm/compare.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import start_sim
from realvllm.compare import assert_same_answer, event, header_names, parse, shape
from realvllm.record import exchange

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "vllm"  # see tests/data/README.md
OURS = ROOT / "tests" / "realvllm" / "recorded"
CASES = json.loads((OURS / "cases.json").read_text())
# Simulator flags that stand for the vLLM flags each recording was made with. The CPU
# build caches blocks of 128 tokens (4096 of them: the simulator's default count).
COMMON = ("--max-model-len", "1024", "--id-from-request-id", "--strict-content-type",
          "--block-size", "128")
FLAVOURS = {"details": ("--prompt-tokens-details",), "rid": ("--enable-request-id-headers",)}


# -- the simulator, started like each recorded server -------------------------------------


@pytest.fixture(scope="module")
def sims():
    started = {name: start_sim(*COMMON, *flags) for name, flags in FLAVOURS.items()}
    yield {name: svc.port for name, svc in started.items()}
    for svc in started.values():
        svc.stop()


def replay(port: int, case: dict) -> bytes:
    """The case's request, built by the recorder itself: the very bytes vLLM got."""
    return exchange(port, case, timeout=10)


CASE_IDS = [(flavour, name) for flavour, cases in CASES.items() for name in cases]


@pytest.mark.parametrize("flavour, name", CASE_IDS, ids=[f"{f}-{n}" for f, n in CASE_IDS])
def test_simulator_answers_like_recorded_vllm(sims, flavour, name):
    case = CASES[flavour][name]
    real = (OURS / flavour / f"{name}.http").read_bytes()
    assert_same_answer(real, replay(sims[flavour], case), case["method"])


def test_request_id_rules_match(sims):
    """vLLM names the reply after X-Request-Id; echoes it only when enabled, else never."""
    def get(flavour, name):
        status, headers, body, _ = parse(replay(sims[flavour], CASES[flavour][name]))
        return dict(headers), body

    headers, body = get("details", "request_id_not_echoed")
    assert "x-request-id" not in headers and json.loads(body)["id"] == "chatcmpl-abc-1"
    headers, _ = get("rid", "rid_health")
    assert headers["x-request-id"] == "abc-8"
    headers, _ = get("rid", "rid_generated")
    real = dict(parse((OURS / "rid" / "rid_generated.http").read_bytes())[1])
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", real["x-request-id"])


def test_prefix_cache_hit_is_reported_like_vllm(sims):
    """The second long prompt hits the cache; the usage says so in vLLM's keys."""
    cases = CASES["details"]
    replay(sims["details"], cases["chat_long_first"])
    _, _, body, _ = parse(replay(sims["details"], cases["chat_long_again"]))
    details = json.loads(body)["usage"]["prompt_tokens_details"]
    real = json.loads(parse((OURS / "details" / "chat_long_again.http").read_bytes())[2])
    assert list(details) == list(real["usage"]["prompt_tokens_details"])
    real_cached = real["usage"]["prompt_tokens_details"]["cached_tokens"]
    # Whole 128-token blocks only, on both (the simulator's tokens are words: fewer).
    assert details["cached_tokens"] > 0 and real_cached > 0
    assert details["cached_tokens"] % 128 == 0 and real_cached % 128 == 0


@pytest.mark.parametrize("name", ["load_text", "load_json", "load_stream"])
def test_in_band_load_matches_the_recording(sims, name):
    """The same ORCA header, byte for byte, from an idle server; none on a stream."""
    real = dict(parse((OURS / "details" / f"{name}.http").read_bytes())[1])
    got = dict(parse(replay(sims["details"], CASES["details"][name]))[1])
    assert got.get("endpoint-load-metrics") == real.get("endpoint-load-metrics")
    assert ("endpoint-load-metrics" in real) == (name != "load_stream")


# -- tests/data/vllm ------------------------------------------------------------------------


def test_data_stream_recording(sims):
    status, headers, chunks, complete = parse((DATA / "stream_raw.http").read_bytes())
    events = [event(c) for c in chunks]
    kinds = [k for k, _ in events]
    assert kinds == ["role"] + ["content"] * 7 + ["finish", "usage", "done"]
    case = {"method": "POST", "path": "/v1/chat/completions",
            "headers": {"content-type": "application/json"},
            "body": {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}],
                     "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True}}}
    s_status, s_headers, s_chunks, s_complete = parse(replay(sims["rid"], case))
    assert s_status == status and s_complete and complete
    # The recording was made with connection: close and without request-id headers.
    names = [n for n in header_names(s_headers) if n != "x-request-id"]
    assert names == header_names(headers)
    assert dict(s_headers)["content-type"] == dict(headers)["content-type"]
    s_events = [event(c) for c in s_chunks]
    assert [k for k, _ in s_events] == kinds
    for (kind, r), (_, s) in zip(events, s_events):
        assert shape(s) == shape(r), kind


def test_data_nonstream_recording(sims):
    real = json.loads((DATA / "nonstream.json").read_bytes())
    case = {"method": "POST", "path": "/v1/chat/completions",
            "headers": {"content-type": "application/json"},
            "body": {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                     "max_tokens": 16}}
    # The recording's server ran without --enable-prompt-tokens-details: null details.
    got = json.loads(parse(replay(sims["rid"], case))[2])
    assert shape(got) == shape(real)


def metric_families(text: str) -> dict[str, tuple[str, str]]:
    """{family: (type, help)} of a Prometheus text exposition."""
    kinds, helps = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            kinds[name] = kind
        elif line.startswith("# HELP "):
            _, _, name, help_ = line.split(" ", 3)
            helps[name] = help_
    return {name: (kinds[name], helps.get(name, "")) for name in kinds}


def metric_labels(text: str) -> dict[str, set[frozenset[str]]]:
    """{sample name: label-name sets seen}."""
    out: dict[str, set[frozenset[str]]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series = line.rsplit(" ", 1)[0]
            name, _, labels = series.partition("{")
            names = frozenset(re.findall(r'(\w+)="', labels))
            out.setdefault(name, set()).add(names)
    return out


def test_metrics_families_the_simulator_mirrors(sims):
    real_text = (DATA / "metrics.txt").read_text()
    case = {"method": "GET", "path": "/metrics", "headers": {}, "body": None}
    status, headers, body, _ = parse(replay(sims["details"], case))
    sim_text = body.decode()
    real, sim = metric_families(real_text), metric_families(sim_text)
    mirrored = {name for name in sim if name.startswith("vllm:")}
    assert mirrored >= {
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total", "vllm:prompt_tokens_cached_total",
        "vllm:generation_tokens_total", "vllm:request_success_total", "vllm:cache_config_info",
    }
    for name in mirrored:
        assert name in real, f"{name}: the simulator claims a family vLLM does not have"
        assert sim[name] == real[name], name  # same type and HELP text
    real_labels, sim_labels = metric_labels(real_text), metric_labels(sim_text)
    for sample, label_sets in sim_labels.items():
        if not sample.startswith("vllm:"):
            continue
        for got in label_sets:
            if sample == "vllm:cache_config_info":  # the few cache settings the sim has
                assert any(got <= labels for labels in real_labels[sample])
            else:
                assert got in real_labels[sample], sample
    reasons = set(re.findall(r'vllm:request_success_total\{[^}]*finished_reason="(\w+)"',
                             real_text))
    assert set(re.findall(r'vllm:request_success_total\{[^}]*finished_reason="(\w+)"',
                          sim_text)) == reasons
    assert dict(headers)["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
