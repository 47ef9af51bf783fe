"""Load as real vLLM reports it: in band on non-streaming answers, and by /metrics scrapes."""

from __future__ import annotations

import http.client
import json
import time

from conftest import metrics, wait_for  # tests/conftest.py

from .conftest import MODEL


def test_the_running_count_stays_on_metrics_while_in_band_reports_come(vllm, proxy):
    # vLLM's endpoint-load-metrics header has its queue and KV usage but no running count; only
    # a scrape has one. An in-band report keeps the last scrape's, so the gauge (and the
    # demand an autoscaler reads, waiting + running) does not drop out while non-streaming
    # traffic keeps the report fresh.
    admin = f"http://127.0.0.1:{proxy.admin_port}"
    running = f'fleetproxy_backend_running{{backend="{vllm.url.split("//")[1]}"}}'
    assert wait_for(lambda: running in metrics(admin), timeout=20)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    for _ in range(5):
        time.sleep(0.1)  # past the proxy's least age of an in-band report: this answer's is taken
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 200 and resp.getheader("endpoint-load-metrics") is None
        values = metrics(admin)
        assert values[running] in (0, 1)  # at most the request that asked
        assert any(k.startswith("fleetproxy_model_demand{") for k in values)
