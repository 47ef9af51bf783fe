"""The bench's own logic, without running a benchmark (well under a second).

`make bench-smoke` runs every scenario for real; these tests pin what it relies on: wrk's report
line and its error counts, the streaming client's parsing in every split of the bytes, the flag
on runs with errors, the nginx config, the CPU accounting of a process tree, and the planned
durations that keep the smoke under 60 s and the full run under 15 minutes.
"""

import asyncio
import json
import os
import random
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import cpu, report, runner, scenarios, stats, wrk  # noqa: E402
from bench.client import Result, _Conn  # noqa: E402
from bench.openloop import schedule  # noqa: E402
from bench.procs import _toml, nginx_conf  # noqa: E402

# -- wrk -----------------------------------------------------------------------------------------

WRK_LINE = ('FPBENCH {"requests":1000,"duration_us":2000000,"bytes":123456,"connect":0,"read":3,'
            '"write":0,"status":7,"timeout":1,"mean_us":850.5,"stdev_us":120.0,"percentiles_us":{"50":800,'
            '"75":900,"90":1000,"95":1100,"99":2500,"99.5":3000,"99.9":4000,"99.99":5000,"100":6000}}')


def test_wrk_report_line_counts_every_error_kind():
    r = wrk.parse("Running 2s test\n  1 threads and 32 connections\n" + WRK_LINE + "\n")
    assert r["errors"] == 3 + 7 + 1
    assert r["error_kinds"] == {"read": 3, "timeout": 1, "non-2xx/3xx": 7}
    assert r["ok"] == 993 and r["rps"] == 500.0
    assert r["latency_ms"]["99"] == 2.5 and r["latency_ms"]["100"] == 6.0
    assert set(r["latency_ms"]) == set(stats.GRID)


def test_wrk_without_report_line_is_an_error():
    try:
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")
    except ValueError as e:
        assert "FPBENCH" in str(e)
    else:
        raise AssertionError("parsed a run that reported nothing")


def test_wrk_scripts_exist_and_get_the_report_hook(tmp_path):
    for s in scenarios.SCENARIOS:
        if s.driver == "wrk":
            path = wrk.script(s.params["lua"], str(tmp_path))
            text = open(path).read()
            assert "wrk.body" in text or "request = function" in text
            assert text.rstrip().endswith("end") and "FPBENCH" in text


# -- the streaming client ------------------------------------------------------------------------

def _event(content):
    delta = {"content": content} if content is not None else {"role": "assistant", "content": ""}
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"


def _chunked(*parts):
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
        b"x-sim-backend: sim-7\r\n\r\n")
STREAM = HEAD + _chunked(_event(None) + _event(" one"), _event(" two"), _event(" three"), b"data: [DONE]\n\n")


class FakeTransport:
    def __init__(self):
        self.written = b""
        self.closed = False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    abort = close


def _replay(raw, cuts):
    """Feed a recorded response to one client connection, cut at ``cuts``."""
    loop = asyncio.new_event_loop()  # only for the future; nothing runs on it
    try:
        conn = _Conn(loop)
        conn.connection_made(FakeTransport())
        result = Result(0.0)
        done = conn.send(b"POST / HTTP/1.1\r\n\r\n", b"", result)
        last = 0
        for cut in cuts + [len(raw)]:
            if cut > last:
                conn.data_received(raw[last:cut])
                last = cut
        if not done.done():
            conn.connection_lost(None)
        return result, conn
    finally:
        loop.close()


def _splits(raw):
    yield []  # whole
    yield list(range(1, len(raw)))  # byte by byte
    rng = random.Random(7)
    for _ in range(20):  # random slices
        yield sorted(rng.sample(range(1, len(raw)), rng.randint(1, 12)))


def test_client_reads_a_stream_in_every_split():
    for cuts in _splits(STREAM):
        result, conn = _replay(STREAM, cuts)
        assert result.error is None, cuts
        assert result.status == 200 and result.tokens == 3 and len(result.gaps) == 2
        assert result.backend == b"sim-7" and conn.reusable


def test_client_counts_broken_streams_as_errors():
    no_done = HEAD + _chunked(_event(" one"))
    assert _replay(no_done, [])[0].error == "stream ended without [DONE]"
    cut = HEAD + b"%x\r\n%s\r\n" % (len(_event(" one")), _event(" one"))  # no terminating chunk
    assert _replay(cut, [])[0].error == "connection closed"
    in_band = HEAD + _chunked(_event(" one"), b'data: {"error": {"message": "boom"}}\n\n')
    assert _replay(in_band, [])[0].error == "in-band error event"
    status = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}"
    result, conn = _replay(status, [])
    assert result.error == "status 503" and not conn.reusable


# -- numbers, flags and the report ---------------------------------------------------------------

def test_percentiles_are_nearest_rank_in_ms():
    p = stats.percentiles([i / 1000 for i in range(1, 1001)])  # 1..1000 ms
    assert p["50"] == 500 and p["99"] == 990 and p["99.9"] == 999 and p["100"] == 1000
    assert stats.percentiles([]) == {}


def _run(target, rep, errors=0, rps=100.0, p99=2.0, cpu_us=None):
    return {"step": "", "target": target, "repeat": rep, "requests": 1000, "ok": 1000 - errors,
            "errors": errors, "rps": rps, "cpu_us_per_req": cpu_us, "sim_cpu_us_per_req": 10.0,
            "latency_ms": {"50": 1.0, "90": 1.5, "99": p99, "99.9": 3.0}}


def test_a_target_with_errors_is_flagged_and_never_quoted():
    runs = [_run("direct", 1, rps=200.0, p99=1.0), _run("direct", 2, rps=200.0, p99=1.0),
            _run("fleetproxy", 1, rps=150.0, cpu_us=30.0),
            _run("fleetproxy", 2, errors=2, rps=190.0, cpu_us=30.0),
            _run("nginx", 1, rps=160.0, cpu_us=15.0), _run("nginx", 2, rps=170.0, cpu_us=15.0)]
    agg = runner.aggregate(runs, [""], ["direct", "fleetproxy", "nginx"], "latency_ms")
    assert agg[""]["fleetproxy"]["flagged"] and agg[""]["fleetproxy"]["errors"] == 2
    assert not agg[""]["nginx"]["flagged"] and agg[""]["nginx"]["rps"] == 165.0
    s = scenarios.by_key("a")[0]
    result = {"runs": runs, "aggregate": agg,
              "config": {"repeat": 2, "duration_s": 10, "workers": 1, "layout": "not pinned"}}
    md = report.scenario_markdown(s, result)
    fp_rows = [ln for ln in md.splitlines() if ln.startswith("| fleetproxy")]
    assert all(report.FLAG in ln for ln in fp_rows) and not any("×" in ln for ln in fp_rows)
    nginx_ratio = [ln for ln in md.splitlines() if ln.startswith("| nginx |") and "×" in ln]
    assert nginx_ratio and "0.82×" in nginx_ratio[0]  # 165 / 200 req/s
    summary = report.summary_markdown([(s, result)], {"cpu": "x", "cpus": 2, "memory_gib": 1, "kernel": "k",
                                                      "python": "3", "fleetproxy": "f", "nginx": None,
                                                      "loadavg_start": (0, 0, 0)}, "today")
    assert report.FLAG in summary


def test_scenario_selection_by_letter_or_name():
    assert [s.key for s in scenarios.by_key("b,chat,a")] == ["b", "d", "a"]
    assert [s.key for s in scenarios.by_key(None)] == [s.key for s in scenarios.SCENARIOS]
    try:
        scenarios.by_key("z")
    except ValueError as e:
        assert "unknown scenario" in str(e)
    else:
        raise AssertionError("accepted an unknown scenario")


def test_planned_durations_fit_the_budgets():
    """The smoke must end within 60 s and the full run within 15 minutes (plans, not timings)."""

    def plan(smoke):
        r = runner.Runner(None, [], None, None, smoke, 1 if smoke else 2, None)
        total = 0.0
        for s in scenarios.SCENARIOS:
            total += r.planned(s, 4 if s.key == "e" else 3)[1]
        return total

    assert plan(smoke=True) < 40
    assert plan(smoke=False) < 12 * 60


def test_open_loop_schedule_is_seeded_poisson():
    a = schedule(200, 10, random.Random(1))
    assert a == schedule(200, 10, random.Random(1))
    assert 1800 < len(a) < 2200 and a == sorted(a) and a[-1] < 10


# -- processes -----------------------------------------------------------------------------------

def test_nginx_config_is_a_streaming_reverse_proxy(tmp_path):
    conf = nginx_conf(str(tmp_path), 40123, ["http://127.0.0.1:40001", "http://127.0.0.1:40002"], 2,
                      binary="/nonexistent/nginx")
    for needle in ("worker_processes 2;", "daemon off;", "master_process on;", "keepalive 256;",
                   "proxy_http_version 1.1;", 'proxy_set_header Connection "";', "proxy_buffering off;",
                   "proxy_request_buffering off;", "access_log off;", "listen 127.0.0.1:40123",
                   "server 127.0.0.1:40001;", "server 127.0.0.1:40002;", f"pid {tmp_path}/nginx.pid;",
                   f"error_log {tmp_path}/error.log"):
        assert needle in conf, needle


def test_generated_config_file_is_toml():
    cfg = {"balance": {"policy": "consistent_hash", "hash_keys": ["header:x-session-id", 'a"b'],
                       "vnodes": 160}}
    assert tomllib.loads(_toml(cfg)) == cfg


CHILD = """
import time
t = time.process_time()
while time.process_time() - t < 0.3:
    pass
print("busy", flush=True)
time.sleep(10)
"""


def test_cpu_time_of_a_process_tree_includes_children():
    spawn = ("import subprocess, sys, time\n"
             f"subprocess.Popen([sys.executable, '-c', {CHILD!r}])\ntime.sleep(10)")
    parent = subprocess.Popen([sys.executable, "-c", spawn], stdout=subprocess.PIPE)
    try:
        assert parent.stdout.readline().strip() == b"busy"  # the child's line, through the inherited pipe
        pids = cpu.tree_pids(parent.pid)
        assert len(pids) == 2
        assert cpu.tree_seconds([parent.pid]) >= 0.3
        assert cpu.tree_seconds([pids[1]]) >= 0.3
    finally:
        for pid in cpu.tree_pids(parent.pid)[1:]:
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
