"""The report: a Markdown table per scenario (stdout and a file), its JSON, and a PNG plot.

Files go to `bench/results/` (or `--out`): `<date>-<key>-<name>.md`, `.json` and `.png` per
scenario, and `<date>-summary.md` with the ratios of every scenario. The JSON holds every run and
the machine it ran on, so a later run can be compared with this one.

Reading the tables: each figure is the median over the repeats; the latency columns are the
scenario's main metric (end-to-end for wrk scenarios, time to first token for the streaming
ones). A target with any error in any repeat is flagged and its ratios are not quoted: a fast
wrong answer is not fast. CPU µs/req is the proxy's own user + system time per answered request
(all its processes), the figure that moves least with the neighbours' load.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

from .scenarios import Scenario
from .stats import GRID, TABLE, paired

FLAG = "**FLAGGED**"


# -- the machine --------------------------------------------------------------------------------

def _cmd(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine(nginx: str | None) -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    return {
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fleetproxy": _cmd([sys.executable, "-m", "proxy", "--version"]),
        "nginx": _cmd([nginx, "-v"]) if nginx else None,
        "wrk": _cmd(["wrk", "--version"]),
        "loadavg_start": os.getloadavg(),
    }


def machine_line(m: dict) -> str:
    return (f"{m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}, "
            f"Python {m['python']}; {m['fleetproxy']}; {m.get('nginx') or 'no nginx'}; load average at start "
            f"{' '.join(f'{x:.2f}' for x in m['loadavg_start'])}")


# -- tables -------------------------------------------------------------------------------------

def _f(x, digits=2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x)


def _ratio(a, b) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "—"


def ratios(row: dict, ref: dict | None, metric: str) -> dict:
    """req/s, p99 and CPU of ``row`` over ``ref``; None where either is flagged or missing."""
    if ref is None or row.get("flagged") or ref.get("flagged"):
        return {}
    out = {}
    if row.get("rps") and ref.get("rps"):
        out["rps"] = row["rps"] / ref["rps"]
    p, q = (row.get(metric) or {}).get("99"), (ref.get(metric) or {}).get("99")
    if p and q:
        out["p99"] = p / q
    if row.get("cpu_us_per_req") and ref.get("cpu_us_per_req"):
        out["cpu"] = row["cpu_us_per_req"] / ref["cpu_us_per_req"]
    return out


def scenario_markdown(s: Scenario, result: dict, heading: str = "##") -> str:
    agg = result["aggregate"]
    lines = [f"{heading} {s.key}. {s.title}", ""]
    if result.get("skipped"):
        return "\n".join(lines + [f"Skipped: {result['skipped']}", ""])
    cfg = result["config"]
    lines += [f"Load: {s.generator}.  ",
              f"{cfg['repeat']} × {cfg['duration_s']:g} s per target, interleaved; {cfg['layout']}; "
              f"fleetproxy and nginx with {cfg['workers']} worker(s). "
              "Figures are medians over the repeats; latencies in ms." + ("  " if cfg.get("params") else ""),
              *(["Parameters: " + ", ".join(f"{k}={v}" for k, v in cfg["params"].items()) + "."]
                if cfg.get("params") else []), ""]
    m = s.metric
    head = ["target", "req/s"] + [f"{s.metric_label} p{p}" for p in TABLE] + ["errors", "CPU µs/req",
                                                                              "sim CPU µs/req"]
    extra = []
    if m == "ttft_ms":
        extra = [("itl_ms", "ITL p50", "50"), ("itl_ms", "ITL p99", "99"),
                 ("latency_ms", "e2e p50", "50"), ("latency_ms", "e2e p99", "99")]
    if s.driver == "openloop":
        extra.append(("lag_ms", "gen. lag p99", "99"))
    head += [h for _, h, _ in extra]
    if any("affinity" in row for rows in agg.values() for row in rows.values()):
        head += ["affinity", "spread max/mean", "per backend"]
    for step, rows in agg.items():
        if step:
            lines += [f"**{step}**", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, row in rows.items():
            pct = row.get(m) or {}
            cells = [name + (f" {FLAG}" if row["flagged"] else ""), _f(row.get("rps"), 1)]
            cells += [_f(pct.get(p)) for p in TABLE]
            cells += [str(row["errors"]), _f(row.get("cpu_us_per_req"), 1),
                      _f(row.get("sim_cpu_us_per_req"), 1)]
            cells += [_f((row.get(k) or {}).get(p)) for k, _, p in extra]
            if "affinity" in head:
                b = row.get("backends") or {}
                spread = max(b.values()) / (sum(b.values()) / len(b)) if b else None
                cells += [_f(row.get("affinity")), _f(spread),
                          " ".join(f"{k}:{v}" for k, v in sorted(b.items())) or "—"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        # Ratios: how each proxy compares with the floor (direct) and with nginx.
        direct, nginx = rows.get("direct"), rows.get("nginx")
        rh = ["target"] + (["req/s ÷ direct", "p99 ÷ direct"] if direct else []) \
            + (["req/s ÷ nginx", "p99 ÷ nginx", "CPU/req ÷ nginx"] if nginx else [])
        rl = []
        for name, row in rows.items():
            if name == "direct" or (name == "nginx" and not direct):
                continue
            if row["flagged"]:
                rl.append(f"| {name} | {FLAG}: errors or no numbers, not quoted |" + " |" * (len(rh) - 2))
                continue
            cells = [name]
            if direct:
                d = ratios(row, direct, m)
                cells += [_x(d.get("rps")), _x(d.get("p99"))]
            if nginx:
                n = ratios(row, nginx, m) if name != "nginx" else {}
                cells += [_x(n.get("rps")), _x(n.get("p99")), _x(n.get("cpu"))]
            rl.append("| " + " | ".join(cells) + " |")
        if rl and len(rh) > 1:
            lines += ["| " + " | ".join(rh) + " |", "|" + "---|" * len(rh)] + rl + [""]
        if nginx and not nginx["flagged"]:
            lines += repeat_ratios(result["runs"], step, rows)
        if m == "ttft_ms" and direct and not direct["flagged"]:
            added = []
            for name, row in rows.items():
                if name == "direct" or row["flagged"]:
                    continue
                a, b = row.get(m) or {}, direct.get(m) or {}
                added.append(f"{name} {_signed(_sub(a, b, '50'))} ms at p50, "
                             f"{_signed(_sub(a, b, '99'))} ms at p99")
            if added:
                lines += ["TTFT the proxy adds over direct: " + "; ".join(added) + ".", ""]
        if m == "ttft_ms" and any(row.get("transit_ms") and not row["flagged"] for row in rows.values()):
            lines += [transit_line(rows), ""]
        if any(row.get("backend_connections") is not None for row in rows.values()):
            lines += [connections_line(rows), ""]
        if any("affinity" in row for row in rows.values()):
            lines += ["Affinity: share of a session's follow-up turns served by the backend that served its "
                      "previous turn (1 = perfect; 1/N = random over N backends). Spread: the busiest "
                      "backend's requests over the mean (1 = even).", ""]
        lag = [row.get("lag_ms", {}).get("99") for row in rows.values() if row.get("lag_ms")]
        if lag and max(lag) > 5.0:
            lines += [f"Note: the generator sent some requests late (lag p99 up to {max(lag):.1f} ms); "
                      "the latencies include that lag (they are timed from when each request was due).",
                      ""]
    if result.get("locust"):
        lines += locust_markdown(result["locust"])
    if result.get("note"):
        lines += [result["note"], ""]
    return "\n".join(lines)


def locust_markdown(per_target: dict) -> list[str]:
    """Locust's own statistics per target and entry name (scenario f; bench/locust_run.py)."""
    head = ["target", "locust entry", "requests", "failures", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    lines = ["**From locust** (its CSV files, `<prefix>_stats.csv`, as locust computed them: "
             "`POST chat turn` is locust's own timing, to the response head; TTFT, ITL and E2E are "
             "entries the locustfile reports; requests and failures summed over the repeats, "
             "percentiles the median of theirs):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entries in per_target.items():
        for entry, e in entries.items():
            ms = e.get("ms") or {}
            cells = [name, entry, _f(e["requests"]), _f(e["failures"])]
            cells += [_f(ms.get(p), 0) for p in ("50", "90", "99", "100")]
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _signed(v) -> str:
    return "—" if v is None else f"{v:+.2f}"


def _x(v) -> str:
    return f"{v:.2f}×" if v is not None else "—"


def repeat_ratios(runs: list[dict], step: str, rows: dict) -> list[str]:
    """Each proxy's CPU per request over nginx's repeat by repeat (a repeat runs every target
    back to back, so its two runs share the machine's state of the moment), with the median
    and a 95% bootstrap interval where there are five repeats or more (``stats.paired``)."""
    cpu = {}
    for r in runs:
        if r["step"] == step and r.get("cpu_us_per_req"):
            cpu.setdefault(r["target"], {})[r["repeat"]] = r["cpu_us_per_req"]
    ref = cpu.get("nginx", {})
    out = []
    for name, row in rows.items():
        if name in ("direct", "nginx") or row["flagged"] or name not in cpu:
            continue
        both = sorted(set(ref) & set(cpu[name]))
        if not both:
            continue
        first, second = [ref[i] for i in both], [cpu[name][i] for i in both]
        each = ", ".join(_x(b / a) for a, b in zip(first, second))
        text = f"{name} {each}"
        if len(both) >= 5:
            m, lo, hi = paired(first, second)
            text += f" (median {_x(m)}, 95% interval {_x(lo)} to {_x(hi)})"
        out.append(text)
    return ["CPU per request ÷ nginx's, repeat by repeat: " + "; ".join(out) + ".", ""] if out else []


def transit_line(rows: dict) -> str:
    """The first token's time outside the simulator per target, and what each proxy adds to it."""
    base = rows.get("direct")
    base = base.get("transit_ms") if base and not base["flagged"] else None
    parts = []
    for name, row in rows.items():
        t = row.get("transit_ms")
        if not t or row["flagged"]:
            continue
        part = f"{name} {_f(t.get('50'))} / {_f(t.get('99'))}"
        if base and name != "direct":
            part += f" ({_signed(_sub(t, base, '50'))} / {_signed(_sub(t, base, '99'))})"
        parts.append(part)
    return ("First token's time outside the simulator, p50 / p99 ms (request leg plus first-token leg, from "
            "the simulator's CLOCK_MONOTONIC stamps: its own wait, whose timer jitter swamps TTFT's tail, "
            "taken out; in brackets what the proxy adds over direct): " + "; ".join(parts) + ".")


def connections_line(rows: dict) -> str:
    """How many connections the simulators accepted per run: a proxy's upstream connects."""
    parts = [f"{name} {row['backend_connections']:g}" for name, row in rows.items()
             if row.get("backend_connections") is not None]
    return ("Connections the simulators accepted per run, median of the repeats (a proxy's upstream "
            "connections, its health checks and load scrapes included; direct: the load generator's own): "
            + "; ".join(parts) + ". Each is a handshake on some request's path, unless the proxy opened it "
            "ahead of demand.")


def _sub(a: dict, b: dict, p: str):
    return a.get(p) - b.get(p) if a.get(p) is not None and b.get(p) is not None else None


def runs_markdown(s: Scenario, result: dict) -> str:
    m = s.metric
    head = ["step", "repeat", "target", "req/s", f"{s.metric_label} p50", f"{s.metric_label} p99",
            f"{s.metric_label} p99.9", "errors", "CPU µs/req"]
    lines = ["### Every run", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["runs"]:
        pct = r.get(m) or {}
        errs = str(r.get("errors", 0)) + (f" {r['error_kinds']}" if r.get("errors") else "")
        cells = [r["step"] or "—", str(r["repeat"]), r["target"], _f(r.get("rps"), 1), _f(pct.get("50")),
                 _f(pct.get("99")), _f(pct.get("99.9")), errs, _f(r.get("cpu_us_per_req"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def summary_markdown(items: list[tuple[Scenario, dict]], m: dict, date: str) -> str:
    lines = [f"# fleetproxy bench summary, {date}", "", f"Machine: {machine_line(m)}.", "",
             "Each fleetproxy target against direct and nginx; p99 is of the scenario's main latency "
             "(end to end for a and b, time to first token for c to f; f's figures are locust's).", "",
             "| scenario | step | target | req/s ÷ direct | p99 ÷ direct | req/s ÷ nginx | p99 ÷ nginx "
             "| CPU/req ÷ nginx | CPU µs/req | nginx CPU µs/req |",
             "|" + "---|" * 10]
    for s, result in items:
        if result.get("skipped"):
            lines.append(f"| {s.key}. {s.name} | skipped: {result['skipped']} |" + " |" * 8)
            continue
        for step, rows in result["aggregate"].items():
            ng = rows.get("nginx") or {}
            for name, row in rows.items():
                if not name.startswith("fleetproxy") and name != "uvloop-floor":
                    continue
                head = [f"{s.key}. {s.name}", step or "—", name]
                if row["flagged"]:
                    lines.append("| " + " | ".join(head + [FLAG]) + " |" + " |" * 6)
                    continue
                d, n = ratios(row, rows.get("direct"), s.metric), ratios(row, rows.get("nginx"), s.metric)
                cells = head + [_x(d.get("rps")), _x(d.get("p99")), _x(n.get("rps")), _x(n.get("p99")),
                                _x(n.get("cpu")), _f(row.get("cpu_us_per_req"), 1),
                                _f(ng.get("cpu_us_per_req"), 1)]
                lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


# -- files ---------------------------------------------------------------------------------------

def write(out_dir: str, date: str, s: Scenario, result: dict, m: dict) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"{date}-{s.slug}")
    md = scenario_markdown(s, result, heading="#")
    if not result.get("skipped"):
        md += "\n" + runs_markdown(s, result)
    md += f"\nMachine: {machine_line(m)}.\n"
    written = []
    with open(base + ".md", "w") as f:
        f.write(md)
    written.append(base + ".md")
    with open(base + ".json", "w") as f:
        json.dump({"scenario": s.slug, "title": s.title, "generator": s.generator, "date": date,
                   "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": m, **result}, f, indent=1)
    written.append(base + ".json")
    if not result.get("skipped") and plot(s, result, base + ".png"):
        written.append(base + ".png")
    return written


def plot(s: Scenario, result: dict, path: str) -> bool:
    """Latency against percentile (HdrHistogram style: 50, 90, 99, 99.9 evenly spaced)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("bench: matplotlib is not installed, no plot (pip install -e '.[bench]')", file=sys.stderr)
        return False
    import math

    panels = [(step, s.metric, s.metric_label) for step in result["aggregate"]]
    if s.metric == "ttft_ms":  # streaming: also the inter-token gaps and the whole answer
        panels = [(step, k, lab) for step in result["aggregate"]
                  for k, lab in ((s.metric, s.metric_label), ("itl_ms", "ITL"), ("latency_ms", "end to end"))]
    cols = 3 if len(panels) % 3 == 0 else min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    grid = [p for p in GRID if p != "100"]
    xs = [-math.log10(1 - float(p) / 100) for p in grid]
    for ax, (step, key, label) in zip(axes.flat, panels):
        ys: list[float] = []
        for name, row in result["aggregate"][step].items():
            pct = row.get(key) or {}
            pts = [(x, pct[p]) for x, p in zip(xs, grid) if pct.get(p)]
            ys += [b for _, b in pts]
            if pts:
                ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", markersize=3,
                        label=name + (" (flagged)" if row["flagged"] else ""),
                        linestyle="--" if row["flagged"] else "-")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"p{p}" for p in grid], fontsize=7)
        if ys and min(ys) > 0 and max(ys) / min(ys) > 8:  # tails an order of magnitude up: log scale
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylabel(f"{label} (ms)")
        ax.set_title(f"{label}{' — ' + step if step else ''}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{s.key}. {s.title} ({time.strftime('%Y-%m-%d')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
