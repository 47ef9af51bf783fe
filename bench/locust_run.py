"""Scenario f: scenario d's chat user under locust, run headless by the suite, read from its CSV.

Two halves in one file:

- The driver, `python -m bench.locust_run --url URL --users N --rate R --duration S --csv PREFIX`:
  locust through its library API (`Environment`, a local runner) in a process of its own, since
  importing locust monkey-patches the standard library for gevent. It prints `start` and `end`
  around the run, as the asyncio drivers do (the proxy's CPU window), and once the users are
  stopped writes `PREFIX_stats.csv`, `_failures.csv` and `_exceptions.csv` with locust's own CSV
  writers: the files `locust --headless --csv PREFIX` writes, same columns. Not that command
  itself: it rewrites its CSV once a second from a greenlet and never after the run ends, so the
  last second's requests, and its failures, would be missing from the files.
- The scenario, `scenario(runner, s, targets)`: every target, `repeat` times, interleaved, each
  run through `Runner._drive` (hang limit, Ctrl-C, CPU of the proxy's process tree over the
  window), the CSV parsed into the shape every driver reports, and locust's own table per entry
  name beside it (`report.locust_markdown`).

Nothing fails silently: requests are the `POST chat turn` entry's count; errors are locust's
failures on every entry plus the exceptions raised in the user's code (locust keeps those apart
from failures; a run with either is flagged and fails the bench, like another driver's errors),
and a run with no request is flagged too (`runner.aggregate`). A missing CSV file is a failed
scenario. Locust's percentiles are its own: response times rounded to two significant digits
above 100 ms, then bucketed.

Top-level imports stay light: the bench imports this module, and the driver must import locust
before anything that gevent patches (ssl, sockets).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import sys

TURN = "POST chat turn"  # locust's own entry for one turn: to the response head
ENTRIES = {"TTFT": "ttft_ms", "ITL": "itl_ms", "E2E": "latency_ms"}  # locustfile's entries -> report keys
STARTUP = 3.0  # s: a driver's imports, users stopping and the CSV files, beyond the run itself
INSTALL = "pip install -e '.[bench]'"


def missing() -> str | None:
    """Why locust cannot run here, or None."""
    if importlib.util.find_spec("locust") is None:
        return f"locust is not installed ({INSTALL})"
    return None


def version() -> str | None:
    try:
        from importlib.metadata import version as v

        return v("locust")
    except Exception:  # noqa: BLE001 - metadata is only said in the report
        return None


# -- the driver (its own process) ----------------------------------------------------------------

def drive(args) -> int:
    # The locustfile reads the simulator's timing from these when it is imported.
    os.environ["FLEETPROXY_SIM_TTFT"] = f"{args.ttft:g}"
    os.environ["FLEETPROXY_SIM_ITL"] = f"{args.itl:g}"
    import gevent  # locust's import below patches the standard library for it
    from locust import stats as lstats
    from locust.env import Environment

    from bench.locustfile import ChatUser

    env = Environment(user_classes=[ChatUser], host=args.url)
    runner = env.create_local_runner()
    print("start", flush=True)
    runner.start(args.users, spawn_rate=args.rate)
    gevent.sleep(args.duration)
    runner.quit()  # turns still streaming are dropped, as `locust -t` drops them
    print("end", flush=True)
    writer = lstats.StatsCSV(env, lstats.PERCENTILES_TO_REPORT)
    for suffix, write in (("stats", writer.requests_csv), ("failures", writer.failures_csv),
                          ("exceptions", writer.exceptions_csv)):
        with open(f"{args.csv}_{suffix}.csv", "w", newline="") as f:
            write(csv.writer(f))
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.locust_run",
                                description="locust, headless, scenario d's chat user; CSV at the end")
    p.add_argument("--url", required=True)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="users started per second")
    p.add_argument("--duration", type=float, required=True, help="seconds from the first user's start")
    p.add_argument("--ttft", type=float, default=0.05, help="simulated time to first token, s")
    p.add_argument("--itl", type=float, default=0.01, help="simulated inter-token latency, s")
    p.add_argument("--csv", required=True, metavar="PREFIX", help="PREFIX_stats.csv, ... (locust's --csv)")
    return p.parse_args(argv)


# -- reading locust's CSV files --------------------------------------------------------------------

def _rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def parse(prefix: str, duration: float) -> dict:
    """One run's CSV files, in the shape the other drivers report, plus locust's per-entry rows."""
    from .stats import GRID

    stats_csv = f"{prefix}_stats.csv"
    if not os.path.exists(stats_csv):
        raise RuntimeError(f"locust wrote no {os.path.basename(stats_csv)}: the run produced nothing")
    entries: dict[str, dict] = {}
    for row in _rows(stats_csv):
        if row["Name"] == "Aggregated":
            continue
        ms = {p: float(row[f"{p}%"]) for p in GRID if row.get(f"{p}%") not in (None, "", "N/A")}
        entries[row["Name"]] = {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                                "rps": round(float(row["Requests/s"]), 2), "ms": ms}
    kinds: dict[str, int] = {}
    for row in _rows(f"{prefix}_failures.csv"):
        key = f"{row['Name']}: {row['Error']}"
        kinds[key] = kinds.get(key, 0) + int(row["Occurrences"])
    exceptions = 0
    for row in _rows(f"{prefix}_exceptions.csv"):
        key = f"exception in the user: {row['Message']}"
        kinds[key] = kinds.get(key, 0) + int(row["Count"])
        exceptions += int(row["Count"])
    turn = entries.get(TURN, {"requests": 0, "failures": 0, "rps": 0.0})
    out = {
        "requests": turn["requests"],
        "ok": turn["requests"] - turn["failures"],
        # Failures on any entry and exceptions in the user's code: every one fails the run.
        "errors": sum(e["failures"] for e in entries.values()) + exceptions,
        "error_kinds": kinds,
        "duration_s": duration,
        "rps": turn["rps"],
        "locust": entries,
    }
    for name, key in ENTRIES.items():
        if entries.get(name, {}).get("ms"):
            out[key] = entries[name]["ms"]
    return out


# -- the scenario (in the bench's process) -----------------------------------------------------

def scenario(runner, s, targets) -> dict:
    """Scenario f against every target: the runs, runner.aggregate's rows, locust's own table."""
    from .runner import aggregate
    from .scenarios import Step

    params = runner.params(s, Step(""))
    d = runner.run_seconds(s)
    runs = []
    for rep in range(runner.repeat):
        order = targets[rep % len(targets):] + targets[:rep % len(targets)]
        for t in order:
            label = f"{s.slug} {t.name} rep {rep + 1}/{runner.repeat}"
            runner.progress.begin(label)
            run = once(runner, t, params, d)
            run.update(step="", target=t.name, repeat=rep + 1)
            runs.append(run)
            if run.get("errors"):
                runner.progress.note(f"  {label}: {run['errors']} errors {run.get('error_kinds')}")
    runner.progress.finish()
    v = version()
    return {"runs": runs, "aggregate": aggregate(runs, [""], [t.name for t in targets], s.metric),
            "locust": per_entry(runs, [t.name for t in targets]),
            "note": (f"locust {v or '?'}; each run is one `python -m bench.locust_run` process (locust's "
                     "library API, its CSV written after the users stop). TTFT, ITL and E2E are entries "
                     "bench/locustfile.py reports itself; ITL is each turn's mean gap between tokens, "
                     "not every gap as in scenarios c-e.")}


def once(runner, t, params: dict, d: float) -> dict:
    prefix = os.path.join(runner.fleet.dir, "locust")
    for suffix in ("stats", "failures", "exceptions"):
        if os.path.exists(f"{prefix}_{suffix}.csv"):
            os.remove(f"{prefix}_{suffix}.csv")  # never read the last run's numbers as this one's
    argv = [sys.executable, "-m", "bench.locust_run", "--url", t.url, "--users", str(params["users"]),
            "--rate", str(params["rate"]), "--duration", str(d), "--ttft", str(params["ttft"]),
            "--itl", str(params["itl"]), "--csv", prefix]
    _, (proxy_s, sim_s), accepted = runner._drive(argv, f"{prefix}_stats.csv", d + STARTUP, t)
    result = parse(prefix, d)
    answered = result["ok"]
    result["cpu_us_per_req"] = round(proxy_s / answered * 1e6, 2) if t.procs and answered else None
    result["sim_cpu_us_per_req"] = round(sim_s / answered * 1e6, 2) if answered else None
    result["cpu_s"] = round(proxy_s, 3)
    result["backend_connections"] = accepted
    return result


def per_entry(runs: list[dict], targets: list[str]) -> dict:
    """{target: {entry: requests, failures (summed over repeats), percentiles (median)}}."""
    from .stats import merge_percentiles

    out: dict = {}
    for name in targets:
        rs = [r.get("locust") or {} for r in runs if r["target"] == name]
        entries = sorted({e for r in rs for e in r}, key=lambda e: (e != TURN, e))
        out[name] = {e: {"requests": sum(r[e]["requests"] for r in rs if e in r),
                         "failures": sum(r[e]["failures"] for r in rs if e in r),
                         "ms": merge_percentiles([r[e]["ms"] for r in rs if e in r])} for e in entries}
    return out


def main(argv=None) -> int:
    return drive(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
