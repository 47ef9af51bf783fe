"""The bench's own logic, and its drivers for real but briefly (a few seconds in all).

`make bench-smoke` runs every scenario for real; these tests pin what it relies on: wrk's report
line and its error counts, the streaming client's parsing in every split of the bytes, the flag
on runs with errors, locust's CSV files and their failures, the nginx config, the CPU accounting
of a process tree, and the planned durations that keep the smoke under 60 s and the full run
under 15 minutes. Two run for real: the locust driver against a simulator for 1.5 s, and the
capacity smoke with 200 streams per target (about 20 s).
"""

import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import tomllib
import urllib.request
from collections import Counter

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import cpu, report, runner, scenarios, stats, wrk  # noqa: E402
from bench.client import Result, _Conn  # noqa: E402
from bench.openloop import schedule, transit  # noqa: E402
from bench.procs import _toml, free_port, nginx_conf, nginx_path, wait_port  # noqa: E402
from test_upstream_faults import read_response  # noqa: E402

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
    from bench import ab

    names = [s.params["lua"] for s in scenarios.SCENARIOS if s.driver == "wrk"] + [
        n for _, n in ab.SCENARIOS + ab.NGINX_SCENARIOS if not n.startswith("open:")]
    for name in names:
        path = wrk.script(name, str(tmp_path))
        text = open(path).read()
        assert "wrk.body" in text or "request = function" in text
        assert text.rstrip().endswith("end") and "FPBENCH" in text


def test_ab_starts_each_process_in_a_session_of_its_own():
    # With autogroups on, a session is a group the scheduler shares a CPU between fairly: the
    # simulator and a proxy pinned together take turns as python -m bench's do (bench/procs.py).
    from bench import ab

    proc = ab._start(["-c", "import time; time.sleep(30)"], ROOT, [])
    try:
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not (__import__("shutil").which("wrk") and nginx_path()),
                    reason="needs wrk and nginx (.ci/run installs both)")
@pytest.mark.skipif(bool(os.environ.get("FLEETPROXY_PURE")),
                    reason="a tool of the bench: checked once, on the native run")
def test_ab_pairs_fleetproxy_with_nginx_on_a_closed_and_an_open_loop(tmp_path):
    """bench.ab --nginx for real, one short round of a wrk load and an open-loop one (about 30 s):
    nginx, fleetproxy and fleetproxy under a config of its own (--configs: observing off, as
    the bench's nginx does none) answer both, each gets a CPU figure, and each fleetproxy run
    a verdict over nginx per scenario."""
    out = tmp_path / "ab.md"
    argv = [sys.executable, "-m", "bench.ab", "--nginx", "--configs", "bench/configs/observe-off.yaml",
            "--lua", "chat.lua,open:50", "--rounds", "1", "--duration", "1", "--out", str(out)]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    assert "--nginx --configs bench/configs/observe-off.yaml --lua chat.lua,open:50" in text
    tables = text.split("\n\n")
    heads = ["proxy CPU, fleetproxy ÷ nginx", "proxy CPU, fleetproxy, observe-off.yaml ÷ nginx"]
    for head in heads:  # a verdict table of its own per fleetproxy run, a row per scenario
        (table,) = [t for t in tables if head + " (" in t]
        rows = [line.strip("| ").split(" | ") for line in table.splitlines()
                if line.startswith(("| a. ", "| c. "))]
        assert [r[0][:2] for r in rows] == ["a.", "c."] and all(len(r) == 4 for r in rows)
    for name in heads:  # the open loop's first-token tail: its pooled p99 against nginx's, per run
        name = name.removeprefix("proxy CPU, ").removesuffix(" ÷ nginx")
        (table,) = [t for t in tables if f"| {name} − nginx |" in t]
        (row,) = [line.strip("| ").split(" | ") for line in table.splitlines() if line.startswith("| c. ")]
        ms = [float(x.split()[0]) for x in row[1].split(", ")]
        diff, (low, high) = float(row[2].split()[0]), [float(x) for x in row[3].split()[::2]]
        assert len(ms) == 2 and all(x > 0 for x in ms) and abs(ms[1] - ms[0] - diff) < 2e-3
        assert low <= diff + 1e-3 and diff - 1e-3 <= high and all(int(n) > 0 for n in row[4].split(", "))
    cells = [line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith(("| a. ", "| c. "))]
    runs = {(c[0][:2], c[1]): float(c[2]) for c in cells if len(c) == 6}
    names = ("nginx", "fleetproxy", "fleetproxy, observe-off.yaml")
    assert set(runs) == {(s, n) for s in ("a.", "c.") for n in names}
    assert all(us > 0 for us in runs.values())


@pytest.mark.skipif(not (__import__("shutil").which("wrk") and nginx_path()),
                    reason="needs wrk and nginx (.ci/run installs both)")
@pytest.mark.skipif(bool(os.environ.get("FLEETPROXY_PURE")),
                    reason="a tool of the bench: checked once, on the native run")
def test_ab_together_loads_every_run_at_once(tmp_path):
    """bench.ab --together: each round's open loop runs against nginx and fleetproxy at once, a
    generator each; each run still gets its own CPU per request and its own requests. With
    --without-defaults the config's run meets nginx alone."""
    out = tmp_path / "ab.md"
    argv = [sys.executable, "-m", "bench.ab", "--nginx", "--configs", "bench/configs/observe-off.yaml",
            "--without-defaults", "--lua", "open:50", "--together", "--rounds", "2", "--duration", "1",
            "--out", str(out)]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    assert "--without-defaults --lua open:50 --together" in text
    rows = {c[1]: c for c in (line.strip("| ").split(" | ") for line in text.splitlines()) if len(c) == 6
            and c[0].startswith("c. ")}
    assert set(rows) == {"nginx", "fleetproxy, observe-off.yaml"}
    for cells in rows.values():
        rounds = [float(x) for x in cells[3].split()]
        assert len(rounds) == 2 and all(us > 0 for us in rounds) and 30 < float(cells[4]) < 70  # req/s: its own 50


def test_ab_without_defaults_needs_nginx_and_configs():
    run = subprocess.run([sys.executable, "-m", "bench.ab", "--nginx", "--without-defaults"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--without-defaults takes --nginx and --configs" in run.stderr


def test_ab_configs_takes_two_files_without_nginx():
    run = subprocess.run([sys.executable, "-m", "bench.ab", "--configs", "bench/configs/observe-off.yaml"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--configs takes two files" in run.stderr


def test_paired_rounds_bound_the_median_ratio():
    # bench.ab's verdict, and the report's CPU ÷ nginx repeat by repeat.
    # A drift that moves both runs of a round alike is not an effect: the ratio holds still.
    first = [10.0, 20.0, 10.5, 30.0, 11.0]
    second = [x * 1.05 for x in first]
    median, low, high = stats.paired(first, second)
    assert abs(median - 1.05) < 1e-12 and abs(low - 1.05) < 1e-12 and abs(high - 1.05) < 1e-12
    # Noisy ratios: the interval holds the median, lies within the rounds, and is seeded.
    second = [11.0, 19.0, 10.0, 33.0, 11.0]
    ratios = sorted(b / a for a, b in zip(first, second))
    median, low, high = stats.paired(first, second)
    assert median == ratios[2] and ratios[0] <= low <= median <= high <= ratios[-1]
    assert stats.paired(first, second) == (median, low, high)
    assert stats.median([3.0, 1.0, 2.0, 4.0]) == 2.5


def test_pooled_tail_takes_every_round_together():
    # bench.ab's open loops: the p99 of all rounds' requests at once, against the first run's.
    # Each round of 100 requests has its own slow one (its p99 is its worst): the pooled p99 of
    # 400 is the 396th, so a single round's outlier no longer sets it.
    first = [[i / 100 for i in range(100)] for _ in range(4)]
    second = [[x + 0.002 for x in r] for r in first]
    second[1] = second[1][:-1] + [5.0]  # one outlier in one round
    a, b, diff, low, high = stats.pooled(first, second)
    assert a == 0.98 and abs(b - 0.982) < 1e-12 and abs(diff - 0.002) < 1e-12
    assert low <= diff <= high and stats.pooled(first, second) == (a, b, diff, low, high)  # seeded
    # A shift of every request moves the pooled p99 by it, in every resample.
    a, b, diff, low, high = stats.pooled(first, [[x + 0.5 for x in r] for r in first])
    assert abs(diff - 0.5) < 1e-12 and abs(low - 0.5) < 1e-12 and abs(high - 0.5) < 1e-12
    assert stats.rank([1.0, 2.0, 3.0], 50.0) == 2.0 and stats.percentiles([0.001])["99"] == 1.0


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


def test_client_keeps_the_simulators_stamps_and_its_own_send_time():
    stamped = HEAD.replace(b"\r\n\r\n", b"\r\nx-sim-received-ns: 1500000000\r\nx-sim-sent-ns: 2000000000\r\n\r\n", 1)
    result, _ = _replay(stamped + _chunked(_event(" one"), b"data: [DONE]\n\n"), [])
    assert result.error is None and result.sim_received == 1.5 and result.sim_sent == 2.0


def test_transit_takes_the_simulators_wait_out_of_the_first_token():
    def stamped(sent, received, left, first):
        r = Result(sent)
        r.sent, r.sim_received, r.sim_sent, r.first, r.tokens = sent, received, left, first, 1
        return r

    # 1 ms to the simulator, a 50 ms wait there, 2 ms back: 3 ms outside it.
    out = transit([stamped(10.0, 10.001, 10.051, 10.053), stamped(20.0, 20.002, 20.052, 20.055)])
    assert out["to_backend_ms"]["100"] == 2.0 and out["first_back_ms"]["100"] == 3.0
    assert out["transit_ms"]["50"] == 3.0 and out["transit_ms"]["100"] == 5.0
    assert transit([Result(1.0)]) == {}  # no stamps (another backend): nothing said


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


def test_report_gives_the_first_tokens_transit_and_what_each_proxy_adds():
    def run(target, t50, t99):
        r = _run(target, 1)
        r["ttft_ms"], r["transit_ms"] = {"50": 50.5, "99": 52.0}, {"50": t50, "99": t99}
        return r

    runs = [run("direct", 0.2, 0.5), run("fleetproxy", 0.35, 0.9), run("nginx", 0.3, 0.7)]
    agg = runner.aggregate(runs, [""], ["direct", "fleetproxy", "nginx"], "ttft_ms")
    result = {"runs": runs, "aggregate": agg,
              "config": {"repeat": 1, "duration_s": 10, "workers": 1, "layout": "not pinned"}}
    md = report.scenario_markdown(scenarios.by_key("c")[0], result)
    line = next(ln for ln in md.splitlines() if ln.startswith("First token's time outside the simulator"))
    assert "direct 0.20 / 0.50;" in line
    assert "fleetproxy 0.35 / 0.90 (+0.15 / +0.40)" in line and "nginx 0.30 / 0.70 (+0.10 / +0.20)" in line


def test_the_report_says_how_many_connections_the_simulators_accepted():
    def run(target, repeat, accepted):
        r = _run(target, repeat)
        r["ttft_ms"], r["backend_connections"] = {"50": 50.5, "99": 52.0}, accepted
        return r

    runs = [run("direct", 1, 64), run("direct", 2, 64), run("fleetproxy", 1, 3), run("fleetproxy", 2, 5),
            run("nginx", 1, 9), run("nginx", 2, 11)]
    agg = runner.aggregate(runs, [""], ["direct", "fleetproxy", "nginx"], "ttft_ms")
    md = report.scenario_markdown(scenarios.by_key("c")[0], {"runs": runs, "aggregate": agg, "config": {
        "repeat": 2, "duration_s": 10, "workers": 1, "layout": "x"}})
    line = next(ln for ln in md.splitlines() if ln.startswith("Connections the simulators accepted"))
    assert "direct 64; fleetproxy 4; nginx 10." in line


def test_the_runner_counts_the_connections_a_simulator_accepted():
    from bench.procs import Fleet

    with Fleet() as fleet:
        url = fleet.start_sim("sim-count")
        r = runner.Runner(None, [], None, None, True, 1, None, sim_urls=[url])
        before = r.accepted()
        for _ in range(3):  # three connections of our own, one request each
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                assert resp.status == 200
        after = r.accepted()
    # Each reading opens a connection of its own and counts it: the later one's is not the run's.
    assert after - before - 1 == 3
    assert runner.Runner(None, [], None, None, True, 1, None).accepted() is None


def test_every_driver_reports_the_connections_the_simulator_accepted():
    """Each driver's run through the runner (wrk, the open loop, the chat users, locust), briefly,
    against the simulator itself: every run carries its count of accepted connections."""
    from bench import locust_run
    from bench.procs import Fleet, Target

    keys = ["c", "d"] + (["a"] if wrk.binary() else []) + ([] if locust_run.missing() else ["f"])
    with Fleet() as fleet:
        url = fleet.start_sim("sim-drivers", ["--ttft", "0.005", "--itl", "0.001"])
        r = runner.Runner(fleet, [], None, runner.Progress(len(keys), 10.0), True, 1, None, sim_urls=[url])
        for key in keys:
            s = scenarios.by_key(key)[0]
            target = Target("direct", url)
            result = locust_run.scenario(r, s, [target]) if s.driver == "locust" else r.scenario(s, [target])
            counts = [run["backend_connections"] for run in result["runs"]]
            # 0 is a count too: the chat users open theirs in the warm-up, before the window.
            assert counts and all(c is not None and c >= 0 for c in counts), (key, counts)


def test_cpu_over_nginx_is_also_given_repeat_by_repeat():
    # nginx's CPU drifts over the repeats and fleetproxy's with it: each repeat's own ratio says
    # 1.10x, which the medians of whole targets (28 / 24 = 1.17x here) do not.
    nginx = [20.0, 24.0, 30.0, 22.0, 26.0]
    runs = [_run("direct", i + 1, rps=200.0, p99=1.0) for i in range(5)]
    runs += [_run("nginx", i + 1, cpu_us=c) for i, c in enumerate(nginx)]
    runs += [_run("fleetproxy", i + 1, cpu_us=c * 1.1) for i, c in enumerate(nginx)]
    agg = runner.aggregate(runs, [""], ["direct", "fleetproxy", "nginx"], "latency_ms")
    s = scenarios.by_key("a")[0]
    md = report.scenario_markdown(s, {"runs": runs, "aggregate": agg, "config": {"repeat": 5, "duration_s": 10,
                                                                                  "workers": 1, "layout": "x"}})
    line = next(ln for ln in md.splitlines() if ln.startswith("CPU per request ÷ nginx's, repeat by repeat"))
    assert "fleetproxy 1.10×, 1.10×, 1.10×, 1.10×, 1.10× (median 1.10×, 95% interval 1.10× to 1.10×)" in line
    # Two repeats: the ratios alone, no interval.
    two = [r for r in runs if r["repeat"] <= 2]
    agg = runner.aggregate(two, [""], ["direct", "fleetproxy", "nginx"], "latency_ms")
    md = report.scenario_markdown(s, {"runs": two, "aggregate": agg, "config": {"repeat": 2, "duration_s": 10,
                                                                                 "workers": 1, "layout": "x"}})
    assert "repeat by repeat: fleetproxy 1.10×, 1.10×." in md


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

    assert plan(smoke=True) < 55  # and start-up: under a minute
    assert plan(smoke=False) < 13 * 60


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


# -- the routing comparison (bench/routing.py, bench/routing_compare.py) --------------------------

from bench import routing as routing_bench  # noqa: E402
from bench import routing_compare as rc  # noqa: E402
from bench import routing_fleet as rf  # noqa: E402


def _workload(name, seed=1):
    return rc.build_workload(rc.WORKLOADS[name], seed, "tiny", 24, 420, 30, 18)


def test_routing_workloads_have_the_issue_shape_and_the_same_bytes_each_time():
    even, skewed = _workload("even"), _workload("skewed")
    assert len(even.sessions) == 24 and even.spec.concurrency == 8 and even.requests == 120
    assert sorted(sum(1 for s in even.sessions if s.group == g) for g in range(4)) == [6, 6, 6, 6]
    assert len(skewed.sessions) == 32 and skewed.spec.concurrency == 16
    assert sorted(sum(1 for s in skewed.sessions if s.group == g) for g in range(4)) == [3, 4, 4, 21]
    assert [s.bodies for s in _workload("even").sessions] == [s.bodies for s in even.sessions]
    assert [s.bodies for s in _workload("even", seed=2).sessions] != [s.bodies for s in even.sessions]
    s = even.sessions[0]
    turns = [json.loads(b) for b in s.bodies]
    assert turns[0]["user"] == f"user-{s.index}" and turns[0]["stream_options"] == {"include_usage": True}
    for a, b in zip(turns, turns[1:]):  # the conversation grows: the previous turn is a prefix
        assert b["messages"][:len(a["messages"])] == a["messages"]
        assert [m["role"] for m in b["messages"][len(a["messages"]):]] == ["assistant", "user"]
    # sessions of one group share their system prompt, other groups do not
    system = {x.group: json.loads(x.bodies[0])["messages"][0]["content"] for x in even.sessions}
    assert len(set(system.values())) == 4 and len(system[0].split()) > 400


def test_routing_stay_share_and_log_attribution():
    sent = [rc.Sent(0, t, f"a-0-{t}", 10.0, None) for t in range(3)] + [rc.Sent(1, t, f"a-1-{t}", 10.0, None)
                                                                        for t in range(3)]
    served = {"a-0-0": "x", "a-0-1": "x", "a-0-2": "y", "a-1-0": "y", "a-1-1": "y"}  # a-1-2 unknown
    assert rc.stay_share(sent, served) == (2, 3)
    log = (b"(APIServer pid=1) INFO 12-03 13:49:34 [request_logger.py:65] Received request chatcmpl-a-0-1: "
           b"params: SamplingParams(n=1)\n(APIServer pid=1) INFO [async_llm.py:578] Added request chatcmpl-a-0-1-ab7e99bf.\n"
           b"INFO Received request cmpl-rt3f-1e0-5-2: params: SamplingParams(n=1)\n")
    assert rc.ids_in_log(log) == ["a-0-1", "rt3f-1e0-5-2"]


def test_routing_run_row_counts_from_the_servers_and_pools_runs():
    before = {"s0": {rc.HITS: 100, rc.QUERIES: 1000, rc.SUCCESS: 5}, "s1": {}}
    after = {"s0": {rc.HITS: 400, rc.QUERIES: 1600, rc.SUCCESS: 7}, "s1": {rc.HITS: 100, rc.QUERIES: 400, rc.SUCCESS: 2}}
    sent = [rc.Sent(0, 0, "r0", 50.0, None), rc.Sent(0, 1, "r1", 20.0, None), rc.Sent(1, 0, "r2", 70.0, None),
            rc.Sent(1, 1, "r3", None, "status 502")]
    row = rc.run_row("p", "even", 1, ["s0", "s1"], sent, {"r0": "s0", "r1": "s0", "r2": "s1", "r3": "s1"},
                     before, after, 3.0)
    assert row["hit_rate"] == 0.4 and row["served"] == {"s0": 2, "s1": 2} and row["served_max_over_mean"] == 1.0
    assert row["stay_share"] == 1.0 and row["errors"] == 1 and row["attribution_mismatch"] == {}
    assert row["ttft_p50_ms"] == 50.0 and row["unattributed"] == 0
    pooled = rc.pool([row, dict(row, hit_tokens=0, hit_rate=0.0)])
    assert pooled["hit_rate"] == 0.2 and pooled["hit_rate_runs"] == [0.4, 0.0] and pooled["served"] == {"s0": 4, "s1": 4}
    text = rc.workload_table([pooled], "p")
    assert text[2].startswith("| p | 20.0% | 40.0%, 0.0% | 100% | 4 / 4 | 1.0 | 100.0% |")
    assert rc.parse_metrics('# HELP x\nvllm:a_total{engine="0",r="x"} 2.0\nvllm:a_total{engine="0",r="y"} 3\n') \
        == {"vllm:a_total": 5.0}


def test_routing_routers_follow_the_config_schema_and_nginx_hashes_the_session():
    names, default = rf.fleetproxy_policies()
    from proxy.config import Balance
    import typing
    assert names == list(typing.get_args(typing.get_type_hints(Balance)["policy"]))
    routers = rf.select_routers(None)
    assert [r.key for r in routers if r.kind == "fleetproxy"][0] == f"fleetproxy:{default}"
    assert {r.kind for r in routers} == {"fleetproxy", "nginx-hash", "bound"} and routers[-1].kind == "bound"
    assert [r.kind for r in rf.select_routers("nginx")] == ["nginx-hash", "nginx-rr", "bound"]
    conf = rf.nginx_hash_conf("/tmp/x", 8080, ["http://127.0.0.1:1", "http://127.0.0.1:2"], "/bin/false", True)
    upstream = conf[conf.index("upstream fleet {"):]
    assert upstream.index("hash $http_x_session_id consistent;") < upstream.index("keepalive 256;")
    assert "hash " not in rf.nginx_hash_conf("/tmp/x", 8080, ["http://127.0.0.1:1"], "/bin/false", False)


def test_routing_command_line_keeps_the_zipf_study_and_picks_defaults_per_study():
    a, zipf = routing_bench.parse([])
    assert not zipf and a.workloads == ["even", "skewed"] and a.runs == 3 and a.backends == 2 and a.max_tokens == 24
    a, zipf = routing_bench.parse(["--workloads", "zipf", "--quick"])
    assert zipf and a.backends == 4 and a.max_tokens == 8 and a.cache_blocks == 400 and a.sessions == 96
    a, _ = routing_bench.parse(["--backend", "vllm", "--quick", "--vllm-urls", "http://h:1/,http://h:2"])
    assert a.runs == 1 and a.vllm_urls == ["http://h:1", "http://h:2"] and a.backends == 2


# -- locust (scenario f: bench/locust_run.py) -----------------------------------------------------

from bench import locust_run  # noqa: E402

STATS_HEAD = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
              "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
              "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\n")


def _locust_csv(prefix, turns=10, turn_failures=0, failures="", exceptions=""):
    pct = ",".join(["55"] * 11)
    na = ",".join(["N/A"] * 11)
    rows = [f"POST,POST chat turn,{turns},{turn_failures},55,55.1,50,60,0.0,5.0,0.0,{pct if turns else na}",
            f"TTFT,TTFT,{turns - turn_failures},0,55,55.1,50,60,0.0,5.0,0.0,{pct if turns else na}",
            f",Aggregated,{2 * turns},{turn_failures},55,55.1,50,60,0.0,10.0,0.0,{pct if turns else na}"]
    with open(f"{prefix}_stats.csv", "w") as f:
        f.write(STATS_HEAD + "\n".join(rows) + "\n")
    with open(f"{prefix}_failures.csv", "w") as f:
        f.write("Method,Name,Error,Occurrences,First Seen,Last Seen\n" + failures)
    with open(f"{prefix}_exceptions.csv", "w") as f:
        f.write("Count,Message,Traceback,Nodes\n" + exceptions)


def test_locust_csv_is_read_and_every_failure_or_exception_counts(tmp_path):
    prefix = str(tmp_path / "locust")
    _locust_csv(prefix)
    ok = locust_run.parse(prefix, 2.0)
    assert ok["requests"] == 10 and ok["errors"] == 0 and ok["rps"] == 5.0
    assert ok["ttft_ms"]["99"] == 55.0 and "99.5" not in ok["ttft_ms"]  # locust has no p99.5 column
    assert set(ok["locust"]) == {"POST chat turn", "TTFT"}
    _locust_csv(prefix, turn_failures=2,
                failures='POST,POST chat turn,"CatchResponseError(\'status 502\')",2,x,y\n',
                exceptions='1,"KeyError: \'choices\'","Traceback...",local\n')
    bad = locust_run.parse(prefix, 2.0)
    assert bad["errors"] == 3 and bad["ok"] == 8
    assert bad["error_kinds"] == {"POST chat turn: CatchResponseError('status 502')": 2,
                                  "exception in the user: KeyError: 'choices'": 1}
    _locust_csv(prefix, turns=0)
    none = locust_run.parse(prefix, 2.0)
    assert none["requests"] == 0 and "ttft_ms" not in none
    runs = [dict(ok, step="", target="direct", repeat=1), dict(bad, step="", target="fleetproxy", repeat=1),
            dict(none, step="", target="nginx", repeat=1)]
    agg = runner.aggregate(runs, [""], ["direct", "fleetproxy", "nginx"], "ttft_ms")[""]
    assert not agg["direct"]["flagged"] and agg["fleetproxy"]["flagged"] and agg["nginx"]["flagged"]
    os.remove(f"{prefix}_stats.csv")
    try:
        locust_run.parse(prefix, 2.0)
    except RuntimeError as e:
        assert "no locust_stats.csv" in str(e)
    else:
        raise AssertionError("a run without its CSV passed")


def test_locust_numbers_are_labelled_as_locust_in_the_report(tmp_path):
    prefix = str(tmp_path / "locust")
    _locust_csv(prefix)
    run = dict(locust_run.parse(prefix, 2.0), step="", target="fleetproxy", repeat=1)
    s = scenarios.by_key("locust")[0]
    result = {"runs": [run], "aggregate": runner.aggregate([run], [""], ["fleetproxy"], s.metric),
              "locust": locust_run.per_entry([run], ["fleetproxy"]),
              "config": {"repeat": 1, "duration_s": 2, "workers": 1, "layout": "not pinned"}}
    md = report.scenario_markdown(s, result)
    assert "locust" in md.split("\n")[2]  # the Load line names the tool
    assert "**From locust**" in md and "| fleetproxy | POST chat turn | 10 | 0 | 55 |" in md


def test_locust_missing_is_said_with_the_install_command(monkeypatch):
    s = scenarios.by_key("f")[0]
    monkeypatch.setattr(locust_run.importlib.util, "find_spec", lambda name: None)
    reason = scenarios.skip_reason(s)
    assert "locust is not installed" in reason and "pip install -e '.[bench]'" in reason


def test_locust_driver_runs_against_a_simulator(tmp_path):
    """The driver for real, briefly: locust's library API, the user, the CSV it writes at the end."""
    import pytest

    if locust_run.missing():
        pytest.skip(locust_run.missing())
    from bench.procs import Fleet

    with Fleet() as fleet:
        url = fleet.start_sim("sim-locust")
        prefix = str(tmp_path / "locust")
        argv = [sys.executable, "-m", "bench.locust_run", "--url", url, "--users", "4", "--rate", "4",
                "--duration", "1.5", "--ttft", "0.01", "--itl", "0.002", "--csv", prefix]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["start", "end"]
    r = locust_run.parse(prefix, 1.5)
    assert r["requests"] > 0 and r["errors"] == 0, r["error_kinds"]
    assert r["ttft_ms"] and r["latency_ms"] and set(r["locust"]) >= {"POST chat turn", "TTFT", "E2E"}


# -- capacity (bench/capacity.py) -------------------------------------------------------------------

def test_capacity_smoke_holds_every_stream_and_reports_numbers(tmp_path):
    """`python -m bench.capacity --smoke` with 200 streams: numbers for every target, no error."""
    argv = [sys.executable, "-m", "bench.capacity", "--smoke", "--streams", "200", "--window", "1",
            "--probe-s", "1", "--out", str(tmp_path)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    [md] = list(tmp_path.glob("*-capacity.md"))
    [js] = list(tmp_path.glob("*-capacity.json"))
    result = json.loads(js.read_text())
    targets = result["targets"]
    assert {"direct", "fleetproxy"} <= set(targets)
    for name, r in targets.items():
        assert r["errors"] == 0, (name, r["error_kinds"])
        assert r["open_streams"] == r["streams"] == 200 and r["token_events"] > 0
        assert r["ttft_ms"].get("99") and r["probe_ttft_ms"].get("99") and r["sim_cpu_us_per_token"]
    for name in (n for n in targets if n != "direct"):
        r = targets[name]
        assert r["kib_per_stream"] is not None and r["cpu_us_per_token"] and r["open"]["rss_kib"] > 0
        assert result["footprint"][name]["rss_kib"] > 0 and len(result["footprint"][name]["processes"]) == 2
    assert result["footprint"]["fleetproxy --single-process"]["rss_kib"] > 0
    text = md.read_text()
    assert "| fleetproxy | 200 of 200 | 0 |" in text and "Idle footprint" in text and "Method." in text
    # The footprint goal judged in every run (met or not: the bench proves goals, tests do not).
    assert re.search(r"- idle footprint ≤ 40 MiB \(PSS, supervisor and one worker\): (met|NOT met) "
                     r"\(\d+\.\d MiB, fleetproxy\)", text), text[:2000]


def test_capacity_cuts_the_streams_to_the_descriptor_limit_and_says_so(monkeypatch):
    from bench import capacity

    limits = {"now": (1024, 20000)}

    def setrlimit(_, value):
        if value[1] > 20000:
            raise ValueError("not allowed to raise maximum limit")
        limits["now"] = value

    monkeypatch.setattr(capacity.resource, "getrlimit", lambda _: limits["now"])
    monkeypatch.setattr(capacity.resource, "setrlimit", setrlimit)
    assert capacity.fit_nofile(500) == (500, 1000 + capacity.FD_SLACK, None)
    streams, limit, note = capacity.fit_nofile(10_000)
    assert streams == 9_900 and limit >= 2 * 9_900 and "20,000" in note and "10,000 streams asked" in note


def test_proxy_cpus_give_the_proxies_cores_of_their_own(monkeypatch):
    # The worker-scaling run: proxies alone on their CPUs, load and simulators split the rest.
    from bench.__main__ import layout

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    load, servers, text = layout(True, {2, 3})
    assert load == {0, 1, 4} and servers == {5, 6, 7}
    assert "alone on CPU 2,3" in text
    with pytest.raises(SystemExit):
        layout(True, {6, 7, 8})  # not this process's
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    with pytest.raises(SystemExit):
        layout(True, {1})  # nothing left for the load and the simulators


def test_placement_times_the_blocks_and_the_pick_of_each_cluster_size():
    """bench/micro/placement.py, briefly: a row per cluster size, the prompts placed by their
    prefix (not the short path), every time a positive number of µs."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "micro", "placement.py"), "--backends", "1,3",
                          "--prompt", "600", "--picks", "400"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = [line.split(" | ") for line in out.stdout.splitlines() if line.startswith(f"| {ROOT} |")]
    assert [r[2] for r in rows] == ["1", "3"]
    for row in rows:
        assert float(row[3]) > 0 and float(row[4]) > 0
        assert "cached" in row[5] and "short" not in row[5]


def test_scrape_cost_reads_the_size_latency_and_server_cpu_of_a_scrape():
    """bench/micro/scrape_cost.py against a simulator: its metrics' size, and a server CPU per
    scrape that is read from the server's process (a PID of another process reads ~0)."""
    sim = subprocess.Popen([sys.executable, "-m", "proxy.sim", "--port", str(port := free_port())], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, sim)
        out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "micro", "scrape_cost.py"), "--url",
                              f"http://127.0.0.1:{port}", "--pid", str(sim.pid), "--scrapes", "50", "--idle", "0.5"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        words = out.stdout.split()
        assert int(words[1]) > 1000  # bytes of the simulator's vLLM-like exposition
        assert float(words[words.index("scrape") + 1]) > 0.0  # ms of the simulator's CPU each
    finally:
        sim.terminate()
        sim.wait(10)


@pytest.mark.skipif(not __import__("shutil").which("valgrind"), reason="valgrind is not installed")
@pytest.mark.skipif(bool(os.environ.get("FLEETPROXY_PURE")), reason="a tool of the bench: checked once, on the native run")
def test_instructions_per_request_counts_the_requests_not_the_start():
    """bench/micro/instructions.py for real, briefly (about 30 s under valgrind): twice as many
    requests in the larger run give the same figure per request within 10% (start-up and
    warm-up cancel out), in the range a proxied request can cost."""
    def per(*args):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "micro", "instructions.py"), *args],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split(":")[1].split("instructions")[0].replace(",", ""))

    fewer = per("--small", "50", "--large", "150")
    more = per("--small", "50", "--large", "250")
    assert 5_000 < fewer < 2_000_000
    assert abs(more - fewer) < 0.1 * fewer, (fewer, more)


@pytest.mark.skipif(not (__import__("shutil").which("valgrind") and __import__("shutil").which("wrk")),
                    reason="valgrind or wrk is not installed")
@pytest.mark.skipif(bool(os.environ.get("FLEETPROXY_PURE")), reason="a tool of the bench: checked once, on the native run")
def test_served_instructions_count_completions_end_to_end():
    """bench/micro/served.py for real, briefly (a serving proxy under valgrind, twice, behind
    wrk): the figure is of chat completions the simulator answered (a run with a non-2xx
    answer is refused), in the range a proxied request can cost."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "micro", "served.py"), "--short", "1", "--long", "3"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("fleetproxy chat.lua itl=0: "), out.stdout
    per = int(out.stdout.split(": ")[1].split(" user-space")[0].replace(",", ""))
    assert 10_000 < per < 2_000_000, out.stdout


def test_bench_ports_lie_below_the_ephemeral_range():
    """A port picked free and bound seconds later by a slow child (valgrind) must not be one an
    outgoing connection's source port can take in between: the bench's range sits below the
    kernel's ephemeral range, and so do free_port's and the test suite's, apart from it and
    from one another (a bench run inside the suite never picks a test's port)."""
    from bench.procs import PORT_RANGE, SPARE_PORTS, TEST_PORTS
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = map(int, f.read().split())
    if low < 11_000:
        pytest.skip(f"no room below this host's ephemeral range ({low}-{high})")
    assert PORT_RANGE.stop <= low and len(PORT_RANGE) == 1000
    ranges = [r for r in (PORT_RANGE, SPARE_PORTS, TEST_PORTS) if r is not None]
    assert all(r.stop <= low for r in ranges)
    assert len(set().union(*ranges)) == sum(map(len, ranges))


def test_a_traced_start_whose_port_was_taken_starts_again_on_another(monkeypatch):
    """Fleet.start_traced (bench/micro/served.py's start under valgrind): a proxy whose port is
    taken between its pick and its bind exits (EADDRINUSE), and the start is tried again on
    another port; what comes back accepts connections and proxies."""
    from bench.procs import Fleet
    with socket.socket() as taken, Fleet() as fleet:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: a connect is refused, a bind fails
        sim = fleet.start_sim("sim")
        picks = iter([taken.getsockname()[1]])
        real = fleet.port
        monkeypatch.setattr(fleet, "port", lambda: next(picks, None) or real())
        argvs = []

        def argv(port):
            argvs.append(port)
            return [sys.executable, "-m", "proxy", "--single-process", "--listen", f"127.0.0.1:{port}",
                    "--admin-listen", f"127.0.0.1:{real()}", "--backend", sim]
        proc, port = fleet.start_traced("fleetproxy", argv, timeout=30)
        assert argvs[0] != port and argvs[-1] == port and len(argvs) == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
            assert r.status == 200 and json.load(r)["data"]


@pytest.mark.skipif(__import__("importlib").util.find_spec("Cython") is None, reason="Cython is not installed")
@pytest.mark.skipif(bool(os.environ.get("FLEETPROXY_PURE")), reason="a tool of the bench: checked once, on the native run")
@pytest.mark.parametrize("read", ["protocol", "reader"])
def test_readfloor_forwards_a_completion_and_a_stream_either_way(sim, read):
    """bench/micro/readfloor.py, built and serving: the floor it measures forwards a chat
    completion and a whole stream, on one keep-alive connection, whichever way its upstream
    side reads (its counts mean nothing if it does not)."""
    subprocess.run([sys.executable, "-m", "bench.micro.readfloor", "--build"], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.micro.readfloor", "--read", read, "--listen",
                             f"127.0.0.1:{port}", "--backend", sim.url], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for stream in (False, True):
                body = json.dumps({"model": "tiny", "max_tokens": 8, "stream": stream,
                                   "messages": [{"role": "user", "content": "hi"}]}).encode()
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                head, got = read_response(s)  # the body by its framing (chunked: de-chunked)
                assert head.startswith(b"HTTP/1.1 200"), head
                if stream:
                    assert got.count(b"data: ") >= 9 and b"data: [DONE]" in got, got[-300:]
                else:
                    assert json.loads(got)["usage"]["completion_tokens"] == 8
    finally:
        proc.terminate()
        proc.wait(10)


# -- idle (bench/idle.py) ---------------------------------------------------------------------------

def test_idle_reports_cpu_and_wakeups_of_the_idle_tree():
    """`python -m bench.idle` one short round: a row for this tree with its CPU and wakeups (an
    idle worker still checks health and scrapes, so neither is zero)."""
    argv = [sys.executable, "-m", "bench.idle", "--seconds", "2.5", "--rounds", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    [row] = [line for line in out.stdout.splitlines() if line.startswith(f"| {ROOT}")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[3]) > 0, row


# -- bench.profile -------------------------------------------------------------------------------

PERF_REPORT = """# Samples: 9K of event 'cpu-clock:pppH'
#
     4431  [kernel.kallsyms]                                [k] finish_task_switch.isra.0
      230  libpython3.11.so.1.0                             [.] _PyObject_Malloc
      120  relay.cpython-311-x86_64-linux-gnu.so           [.] __pyx_f_5proxy_4http_5relay_5Relay_upstream_data
       80  framing_c.cpython-311-x86_64-linux-gnu.so        [.] __pyx_f_9_speedups_9framing_c_14ResponseFramer_feed
       60  loop.cpython-311-x86_64-linux-gnu.so             [.] uv__io_poll
       40  nginx                                            [.] ngx_http_parse_request_line
       30  libc.so.6                                        [.] __memmove_avx_unaligned_erms
       20  [vdso]                                           [.] __vdso_clock_gettime
       10  parser.cpython-311-x86_64-linux-gnu.so           [.] llhttp_execute
        5  _core.cpython-311-x86_64-linux-gnu.so            [.] msgspec_decode
"""


def test_profile_reads_perf_and_sorts_every_object_into_its_component():
    from bench import profile

    samples = profile.parse_report(PERF_REPORT)
    assert samples[("[kernel.kallsyms]", "finish_task_switch.isra.0")] == 4431
    assert sum(samples.values()) == 5026
    ours = profile._fleetproxy_objects()
    assert {"relay", "framing_c", "prefix_c", "shm", "_cyutility"} <= ours
    parts = Counter()
    for (dso, _), n in samples.items():
        parts[profile.component(dso, ours)] += n
    assert parts == {"kernel": 4451, "CPython": 230, "fleetproxy (compiled)": 200, "uvloop (libuv)": 60,
                     "nginx": 40, "libc": 30, "httptools": 10, "other": 5}


def test_profile_table_gives_microseconds_per_request_and_the_proc_check():
    from bench import profile

    runs = {"fleetproxy": {"requests": 1000, "cpu_s": 0.03, "samples": profile.parse_report(PERF_REPORT)}}
    text = profile.table("chat.lua", runs, 1000, 3, profile._fleetproxy_objects())
    # 5,026 samples at 1,000 Hz over 1,000 requests: 5.026 ms of CPU, 5,026 µs a request.
    assert "| **sampled, all** | **5026.00** |" in text
    assert "| kernel | 4451.00 |" in text and "| /proc, utime + stime | 30.00 |" in text
    assert text.count("| kernel | `") == 1 and "`_PyObject_Malloc`" in text  # the top 3 functions


@pytest.mark.skipif(not __import__("shutil").which("wrk"), reason="wrk is not installed")
@pytest.mark.skipif(bool(os.environ.get("FLEETPROXY_PURE")), reason="a tool of the bench: checked once, on the native run")
def test_profile_samples_a_proxy_under_load(tmp_path):
    """bench.profile for real, briefly (2 s of wrk against fleetproxy): where perf may sample
    other processes, the sampled CPU per request is most of what /proc counted, and fleetproxy's
    compiled modules are in it."""
    from bench import profile

    if why := profile.can_record():
        pytest.skip(why)
    out = tmp_path / "profile.md"
    assert profile.main(["--wrk", "chat.lua", "--targets", "fleetproxy", "--duration", "2", "--out", str(out)]) == 0
    text = out.read_text()
    row = {line.split(" | ")[0].strip("| *"): line.split(" | ")[1].strip("| *")
           for line in text.splitlines() if line.startswith("| ") and " | " in line}
    sampled, counted = float(row["sampled, all"]), float(row["/proc, utime + stime"])
    assert 0.5 * counted < sampled < 1.5 * counted, text
    assert float(row["fleetproxy (compiled)"]) > 0 and float(row["kernel"]) > 0, text
