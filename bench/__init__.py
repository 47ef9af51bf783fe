"""fleetproxy's bench suite: `python -m bench` (or `make bench`; `make bench-smoke` for CI).

It starts a simulated vLLM server, fleetproxy and nginx in front of it (nginx when installed), runs
the scenarios in bench/scenarios.py against each target (direct to the simulator: the floor;
fleetproxy; nginx: the baseline) interleaved and repeated, and reports req/s, latency
percentiles, errors, the ratios to direct and to nginx, and each proxy's CPU per request.

The pieces, in the order a run uses them:
- `__main__.py` — flags, the CPU layout, the fleet, the loop over scenarios, the exit status.
- `procs.py` — starting and stopping simulators, fleetproxy and nginx (generated config).
- `scenarios.py` — what each scenario runs, for how long; scenario e's hook for the balancer.
- `runner.py` — one scenario: warm-up, interleaved repeats, the CPU window of each run.
- `wrk.py` + `lua/` — closed-loop max throughput (scenarios a, b).
- `client.py`, `openloop.py`, `chat_users.py` — the asyncio streaming drivers (c, d, e).
- `cpu.py` — user + system time of a process tree from /proc.
- `stats.py`, `report.py` — percentiles; Markdown, JSON and PNG in bench/results/.
- `locustfile.py` + `locust_run.py` — scenario d's chat user for locust (its UI, a real fleet), and
  scenario f: that user run headless against every target, locust's numbers read from its CSV.
- `capacity.py` — `python -m bench.capacity [--streams N] [--smoke]`: N slow streams held open
  through one worker beside nginx and direct: memory per stream, CPU per token event, first-token
  p99 against direct, the idle footprint (its own command: not in `python -m bench`).
- `routing.py` (+ `routing_compare.py`, `routing_fleet.py`) — routing quality, `python -m
  bench.routing`: fleetproxy's policies beside nginx's consistent hash and one server alone, on
  simulators or two real vLLM servers (`--backend vllm`), even and skewed chat workloads.
- `ab.py` — CPU per request of the working tree against another revision, in one run.
- `cpusplit.py` — `python -m bench.cpusplit [--rate N]`: scenario c's CPU per request split into user
  and kernel time (and context switches) for fleetproxy, nginx and the uvloop floor.
- `micro/` — micro benchmarks of single hot functions: a separate suite.
"""
