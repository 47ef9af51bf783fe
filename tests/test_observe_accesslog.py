"""The access log (observe.access_log_path, on with access_log): one JSON line per request."""

import json

from conftest import start_proxy, start_sim, wait_for

from test_metrics_requests import CHAT, post


def test_one_json_line_per_request(tmp_path):
    sim = start_sim()
    log = tmp_path / "access.log"
    config = tmp_path / "fp.yaml"
    config.write_text(f"backends: [{{url: '{sim.url}'}}]\naccess_log: true\nobserve: {{access_log_path: '{log}'}}\n")
    proxy = start_proxy([], "--config", str(config))
    try:
        assert post(proxy.port, CHAT)[0] == 200
        assert post(proxy.port, {**CHAT, "stream": True, "stream_options": {"include_usage": True}})[0] == 200
        assert post(proxy.port, {**CHAT, "model": "nope"})[0] == 404
        # Buffered: written within a second of the first line, or when the worker drains.
        assert wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 3, timeout=5)
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        first, streamed, missing = lines
        assert first["model"] == "tiny" and first["status"] == 200 and first["outcome"] == "ok"
        assert first["tenant"] == "default" and first["attempts"] == 1 and first["backend"]
        assert first["completion_tokens"] == CHAT["max_tokens"] and first["bytes"] > 0
        assert first["ttft_ms"] is not None and first["total_ms"] >= first["ttft_ms"]
        assert streamed["completion_tokens"] == CHAT["max_tokens"] and streamed["id"] != first["id"]
        assert missing["status"] == 404 and missing["model"] == "nope"
    finally:
        proxy.stop()
        sim.stop()
