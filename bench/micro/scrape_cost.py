"""What one ``GET /metrics`` costs the server that answers it: latency, and the CPU of its
process (its idle CPU, read over a window first, subtracted).

    python bench/micro/scrape_cost.py --url http://127.0.0.1:18650 --pid PID [--scrapes 200]

Why. fleetproxy scrapes every vLLM's /metrics for its load (``load.scrape_interval``); vLLM's
API server renders ~50 KiB of Prometheus text on its one asyncio loop for each, and every
stream's tokens wait behind it. This says how much, for a server started by
``../shared/realvllm/start.sh`` (its PID file: /tmp/realvllm/vllm-PORT.pid).
"""

import argparse
import http.client
import os
import statistics
import sys
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from bench.cpu import run_ns  # noqa: E402  (the bench's own reading of a process's CPU)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True, help="the server process whose CPU is read")
    p.add_argument("--scrapes", type=int, default=200)
    p.add_argument("--path", default="/metrics")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of the idle window read first")
    args = p.parse_args(argv)
    where = urlsplit(args.url)
    if run_ns(args.pid) is None:
        sys.exit(f"no CPU time to read for PID {args.pid} (gone, or no schedstat)")
    before = run_ns(args.pid)
    time.sleep(args.idle)
    idle = (run_ns(args.pid) - before) / args.idle  # ns a second
    # Opened after the idle wait: a server closes a connection idle that long.
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    latencies, size = [], 0
    before = run_ns(args.pid)
    for _ in range(args.scrapes):
        t = time.perf_counter()
        conn.request("GET", args.path)
        size = len(conn.getresponse().read())
        latencies.append(time.perf_counter() - t)
    used = run_ns(args.pid) - before - idle * sum(latencies)
    latencies.sort()
    print(f"{args.path}: {size} bytes; latency median {statistics.median(latencies) * 1e3:.2f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1e3:.2f} ms; server CPU per scrape "
          f"{used / args.scrapes / 1e6:.2f} ms (idle {idle / 1e6:.2f} ms/s)")


if __name__ == "__main__":
    main()
