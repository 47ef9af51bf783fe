"""Turn a pytest-benchmark JSON from bench/micro into a markdown table of pure/native ratios.

    python bench/micro/summarize.py bench/micro/results/2026-11-29-framing.json > summary.md
"""

import json
import sys
from collections import defaultdict


def main(path):
    with open(path) as f:
        run = json.load(f)
    groups = defaultdict(dict)
    for bench in run["benchmarks"]:
        impl = bench["param"] if bench.get("param") in ("pure", "native") else bench["name"].split("[")[-1][:-1]
        groups[bench["group"]][impl] = bench["stats"]
    m = run["machine_info"]
    cpu = m.get("cpu", {}).get("brand_raw", m.get("processor", "?"))
    load = m.get("load_average_at_start")
    print(f"Machine: {cpu}, {m.get('cpu', {}).get('count', '?')} logical CPUs, "
          f"{m['python_implementation']} {m['python_version']}; {run['datetime'][:19]} UTC"
          + (f"; load average {load[0]:.2f} at start" if load else "")
          + (f"; {m['note']}" if m.get("note") else "") + ".\n")
    print("| function (input) | pure median | native median | pure / native |")
    print("|---|---:|---:|---:|")
    for group, stats in groups.items():
        p, n = stats.get("pure"), stats.get("native")
        if p is None or n is None:
            continue
        print(f"| {group} | {_t(p['median'])} | {_t(n['median'])} | {p['median'] / n['median']:.1f}x |")


def _t(seconds):
    return f"{seconds * 1e9:,.0f} ns" if seconds < 1e-5 else f"{seconds * 1e6:,.1f} µs"


if __name__ == "__main__":
    main(sys.argv[1])
