"""Instructions per request of the proxy's own path, counted by callgrind: a figure that does not
move with the machine.

    python bench/micro/instructions.py [--config FILE] [--stream] [--sdk-head] [--top 20]

Why. ``path.py`` times the real data path in one process; on a shared machine its µs still
move 10-30% between runs (neighbours, frequency, caches), which hides a change worth 2%.
Instructions retired do not move: this runs ``path.py`` under valgrind's callgrind twice, with
``--small`` and ``--large`` requests, and divides the difference by the difference (start-up,
imports and warm-up cancel out). String hashing is seeded (PYTHONHASHSEED=0) so dict probes
repeat too. ``--top`` lists the functions that changed most per request (self cost). An
instruction is not a nanosecond (a cache miss costs hundreds), so this complements the timed
benches, and end to end the kernel's half of the CPU is not in it at all.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
_ROW = re.compile(r"\s*([\d,]+) \([^)]*\)\s+(\S.*)")


def count(n, args, where):
    """(instructions of a path.py run with ``n`` requests, its callgrind output file)."""
    out = os.path.join(where, f"callgrind.{n}")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
           os.path.join(HERE, "path.py"), "--rounds", "1", "--requests", str(n), *args]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or found is None:
        sys.exit(f"callgrind run failed ({run.returncode}):\n{run.stderr[-2000:]}")
    return int(found.group(1)), out


def self_costs(path):
    """Self cost per function of one callgrind output (callgrind_annotate's table)."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", path], capture_output=True, text=True).stdout
    costs = Counter()
    for line in text.split("Auto-annotated source")[0].splitlines():
        row = _ROW.match(line)
        if row and "PROGRAM TOTALS" not in line:
            name = row.group(2).split(" [")[0]
            costs[name.rsplit(":", 1)[-1]] += int(row.group(1).replace(",", ""))
    return costs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="a config file, as path.py takes it")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--sdk-head", action="store_true")
    p.add_argument("--system", action="store_true", help="path.py's chat with a 1.5 KiB system prompt")
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--large", type=int, default=3000)
    p.add_argument("--top", type=int, default=0, help="list the N functions with the most instructions per request")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian/Ubuntu: apt-get install valgrind)")
    if args.large <= args.small:
        sys.exit("--large must be more requests than --small")
    extra = (["--config", args.config] if args.config else []) + ["--stream"] * args.stream + ["--sdk-head"] * args.sdk_head
    extra += ["--system"] * args.system
    with tempfile.TemporaryDirectory() as where:
        (a, fa), (b, fb) = count(args.small, extra, where), count(args.large, extra, where)
        per = (b - a) / (args.large - args.small)
        print(f"{'stream' if args.stream else 'json'}: {per:,.0f} instructions/request of the proxy's Python "
              f"(callgrind, {args.large} - {args.small} requests)")
        if args.top:
            small, large = self_costs(fa), self_costs(fb)
            rows = sorted(((large[k] - small[k]) / (args.large - args.small), k) for k in large)
            for n, name in reversed(rows[-args.top:]):
                print(f"{n:9,.0f}  {100 * n / per:5.1f}%  {name}")


if __name__ == "__main__":
    main()
