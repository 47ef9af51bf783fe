"""A real Prometheus scrapes the supervisor's /metrics and answers TTFT quantiles per model.

The Debian package ``prometheus`` (installed by .ci/run). Without the binary the test skips,
except under CI=true, where a missing Prometheus is a failure."""

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import free_port, start_proxy, start_sim, wait_port

from test_metrics_requests import post

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def prometheus_binary():
    if PROMETHEUS is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed (CI installs Debian's prometheus package)")
        pytest.skip("prometheus is not installed: apt-get install prometheus")
    return PROMETHEUS


def query(port, promql):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)["data"]["result"]


def test_prometheus_scrapes_ttft_quantiles_per_model(prometheus_binary, tmp_path):
    sims = [start_sim("--model", model, "--ttft", "0.02") for model in ("tiny", "small")]
    config = tmp_path / "fp.yaml"
    config.write_text(
        "clusters:\n"
        + "".join(f"  - {{name: {m}, models: [{m}], backends: [{{url: '{s.url}'}}]}}\n"
                  for m, s in zip(("tiny", "small"), sims))
        + "workers: 2\n"
    )
    proxy = start_proxy([], "--config", str(config))
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: fleetproxy\n    static_configs: [{{targets: ['127.0.0.1:{proxy.admin_port}']}}]\n"
    )
    prom = subprocess.Popen(
        [prometheus_binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_port(port, timeout=30, proc=prom)
        for _ in range(4):
            for model in ("tiny", "small"):
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
                assert post(proxy.port, body)[0] == 200
        promql = ("histogram_quantile(0.9, sum by (model, le) "
                  "(rate(fleetproxy_time_to_first_token_seconds_bucket[1m])))")
        deadline = time.monotonic() + 30
        result = []
        while time.monotonic() < deadline:
            # rate() needs two scrapes that both saw the requests; keep them coming meanwhile.
            for model in ("tiny", "small"):
                post(proxy.port, {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                  "stream": True})
            result = [r for r in query(port, promql) if r["value"][1] not in ("NaN", "+Inf")]
            if {r["metric"].get("model") for r in result} == {"tiny", "small"}:
                break
            time.sleep(0.5)
        assert {r["metric"]["model"] for r in result} == {"tiny", "small"}, result
        assert all(0 < float(r["value"][1]) < 60 for r in result)
        demand = query(port, "fleetproxy_model_demand")
        assert {r["metric"]["model"] for r in demand} == {"tiny", "small"}
    finally:
        prom.terminate()
        prom.wait(10)
        proxy.stop()
        for sim in sims:
            sim.stop()
