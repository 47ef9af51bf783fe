"""One scenario, end to end: warm up, run every target `repeat` times interleaved, measure CPU.

How a run is measured: the driver (wrk, or one of the asyncio generators in a fresh process,
pinned to the load CPUs) makes the load; the CPU time of each proxy's process tree and of the
simulators is read from /proc when the measured window opens and when it closes (the asyncio
drivers print `start` / `end`; for wrk, the window is the process's life, whose start-up costs
microseconds). CPU per request = that difference / requests answered in the window.

Interleaving: repeat r runs the targets in an order rotated by r (direct, fleetproxy, nginx, then
fleetproxy, nginx, direct, ...), so a neighbour's burst or a slow drift of the machine does not
land on one target only.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time

from . import cpu, wrk
from .procs import Fleet, Target
from .routing_fleet import scrape
from .scenarios import Scenario, Step
from .stats import median_of, merge_percentiles

DRIVER_GRACE = 60.0  # s past the planned duration before a driver is declared hung


class Progress:
    """One status line on stderr: rewritten in place on a terminal, one line per run elsewhere."""

    def __init__(self, total_runs: int, planned_s: float):
        self.total = total_runs
        self.done = 0
        self.t0 = time.monotonic()
        self.planned = planned_s
        self.tty = sys.stderr.isatty()
        self.label = ""

    def begin(self, label: str, counted: bool = True) -> None:
        """A run starts; warm-ups are shown but not counted."""
        self.done += counted
        self.label = f"[{self.done + (not counted):>2}/{self.total}] {label}"
        if not self.tty:
            print(f"{self.label} ...", file=sys.stderr, flush=True)

    def tick(self, run_elapsed: float, run_planned: float) -> None:
        if not self.tty:
            return
        spent = time.monotonic() - self.t0
        line = (f"\r{self.label}  {run_elapsed:5.1f}/{run_planned:.0f} s  "
                f"total {_mmss(spent)} of ~{_mmss(self.planned)}")
        print(line.ljust(100)[:118], end="", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self.tty:
            print("\r" + " " * 118 + "\r", end="", file=sys.stderr)
        print(text, file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.tty:
            print("\r" + " " * 118 + "\r", end="", file=sys.stderr, flush=True)


def _mmss(s: float) -> str:
    return f"{int(s) // 60}:{int(s) % 60:02d}"


class Runner:
    def __init__(self, fleet: Fleet, sims: list[int], load_cpus: set[int] | None, progress: Progress,
                 smoke: bool, repeat: int, duration: float | None, threads: int = 1,
                 sim_urls: list[str] = ()):
        self.fleet = fleet
        self.sim_urls = list(sim_urls)  # the simulators, asked how many connections they accepted
        self.threads = threads  # wrk's: more than one only where the load generators have cores (--proxy-cpus)
        self.sims = sims  # simulator pids, for their CPU per request
        self.load_cpus = load_cpus
        self.progress = progress
        self.smoke = smoke
        self.repeat = repeat
        self.duration = duration
        self.current: subprocess.Popen | None = None

    # -- planning

    def run_seconds(self, s: Scenario) -> float:
        if self.duration is not None:
            return self.duration
        return s.smoke_duration if self.smoke else s.duration

    def warmup_seconds(self, s: Scenario) -> float:
        if self.smoke:  # wrk counts whole seconds: the smoke skips its warm-up runs
            return 0.0 if s.driver == "wrk" else min(s.warmup, 0.3)
        return s.warmup

    def steps(self, s: Scenario) -> tuple[Step, ...]:
        return s.smoke_steps if self.smoke and s.smoke_steps else s.steps

    def params(self, s: Scenario, step: Step) -> dict:
        p = dict(s.params)
        if self.smoke:
            p.update(s.smoke_params)
        p.update(step.params)
        return p

    def planned(self, s: Scenario, targets: int) -> tuple[int, float]:
        """(runs, seconds) this scenario will take, for the progress line."""
        d, w = self.run_seconds(s), self.warmup_seconds(s)
        runs = len(self.steps(s)) * targets * self.repeat
        if s.driver == "wrk":
            secs = runs * (d + 0.2) + (len(self.steps(s)) * targets * (w + 0.2) if w else 0)
        else:
            secs = runs * (d + w + 1.2)  # start-up of the driver, drain of the last streams
        return runs, secs

    # -- running

    def scenario(self, s: Scenario, targets: list[Target]) -> dict:
        runs = []
        for step in self.steps(s):
            params = self.params(s, step)
            if s.driver == "wrk" and self.warmup_seconds(s) > 0:  # wrk warms up in its own short runs
                lua = wrk.script(params["lua"], self.fleet.dir)
                for t in targets:
                    self.progress.begin(f"{s.slug} {step.label + ' ' if step.label else ''}{t.name} warm-up",
                                        counted=False)
                    self._drive(wrk.argv(t.url, lua, self.warmup_seconds(s), params["connections"], self.threads),
                                None, self.warmup_seconds(s), t)
            for rep in range(self.repeat):
                order = targets[rep % len(targets):] + targets[:rep % len(targets)]
                for t in order:
                    label = f"{s.slug} {step.label + ' ' if step.label else ''}{t.name} " \
                            f"rep {rep + 1}/{self.repeat}"
                    self.progress.begin(label)
                    run = self.once(s, step, params, t)
                    run.update(step=step.label, target=t.name, repeat=rep + 1)
                    runs.append(run)
                    if run.get("errors"):
                        self.progress.note(f"  {label}: {run['errors']} errors {run.get('error_kinds')}")
        self.progress.finish()
        return {"runs": runs, "aggregate": aggregate(runs, [st.label for st in self.steps(s)],
                                                     [t.name for t in targets], s.metric)}

    def once(self, s: Scenario, step: Step, params: dict, t: Target) -> dict:
        d = self.run_seconds(s)
        out = os.path.join(self.fleet.dir, "driver.json")
        if os.path.exists(out):
            os.remove(out)  # a driver that writes nothing must not pass off the last run's numbers
        if s.driver == "wrk":
            lua = wrk.script(params["lua"], self.fleet.dir)
            text, cpu_s, accepted = self._drive(wrk.argv(t.url, lua, d, params["connections"], self.threads),
                                                None, d, t)
            result = wrk.parse(text)
        else:
            module = "bench.openloop" if s.driver == "openloop" else "bench.chat_users"
            argv = [sys.executable, "-m", module, "--url", t.url, "--duration", str(d),
                    "--warmup", str(self.warmup_seconds(s)), "--out", out]
            for k, v in params.items():
                if k != "backends":
                    argv += [f"--{k}", str(v)]
            _, cpu_s, accepted = self._drive(argv, out, d + self.warmup_seconds(s), t)
            with open(out) as f:
                result = json.load(f)
        answered = result.get("ok") or 0
        proxy_s, sim_s = cpu_s
        result["cpu_us_per_req"] = round(proxy_s / answered * 1e6, 2) if t.procs and answered else None
        result["sim_cpu_us_per_req"] = round(sim_s / answered * 1e6, 2) if answered else None
        result["cpu_s"] = round(proxy_s, 3)
        result["backend_connections"] = accepted
        return result

    def _drive(self, argv: list[str], out: str | None, planned: float, t: Target):
        """Run one driver; return its stdout, (proxy CPU s, simulator CPU s) over the window,
        and the connections the simulators accepted in it (None where they could not say)."""
        proxies = t.pids

        def sample():
            return cpu.tree_seconds(proxies), cpu.tree_seconds(self.sims), self.accepted()

        cpus = self.load_cpus
        before = sample() if out is None else None  # wrk: the window is the process's life
        after = None
        started = time.monotonic()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             start_new_session=True, cwd=_repo_root(),
                             preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        self.current = p
        chunks: list[bytes] = []
        errs: list[bytes] = []
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ, chunks)
        sel.register(p.stderr, selectors.EVENT_READ, errs)
        pending = b""
        try:
            open_fds = 2
            while open_fds:
                if time.monotonic() - started > planned + DRIVER_GRACE:
                    raise RuntimeError(f"driver hung: {' '.join(argv)}")
                for key, _ in sel.select(timeout=0.25):
                    data = os.read(key.fileobj.fileno(), 65536)
                    if not data:
                        sel.unregister(key.fileobj)
                        open_fds -= 1
                        continue
                    key.data.append(data)
                    if key.data is chunks and out is not None:
                        # The asyncio drivers mark their measured window with `start` / `end`.
                        pending += data
                        while b"\n" in pending:
                            line, _, pending = pending.partition(b"\n")
                            if line.strip() == b"start":
                                before = sample()
                            elif line.strip() == b"end":
                                after = sample()
                self.progress.tick(time.monotonic() - started, planned)
            rc = p.wait()
        finally:
            sel.close()
            self.stop_driver()
        if after is None:
            after = sample()
        text = b"".join(chunks).decode(errors="replace")
        if rc != 0:
            raise RuntimeError(f"driver exited with status {rc}: {' '.join(argv)}\n"
                               + b"".join(errs).decode(errors="replace")[-2000:])
        if before is None:
            raise RuntimeError(f"driver never opened its measured window: {' '.join(argv)}")
        accepted = None
        if after[2] is not None and before[2] is not None:
            accepted = after[2] - before[2] - len(self.sim_urls)  # the last reading's own connections
        return text, (after[0] - before[0], after[1] - before[1]), accepted

    def accepted(self) -> int | None:
        """Connections the simulators have accepted so far (``sim:connections_total``), this
        reading's own included; None without simulators to ask or where one does not answer.
        Over a run, the upstream connections a proxy opened (with its health checks and load
        scrapes): a tail of first tokens made of new connections shows here."""
        if not self.sim_urls:
            return None
        try:
            counts = [scrape(url).get("sim:connections_total") for url in self.sim_urls]
        except (OSError, RuntimeError):
            return None
        return None if None in counts else int(sum(counts))

    def stop_driver(self) -> None:
        p, self.current = self.current, None
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(3.0)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()
        try:
            p.wait(2.0)
        except subprocess.TimeoutExpired:
            pass


def aggregate(runs: list[dict], steps: list[str], targets: list[str], metric: str) -> dict:
    """Per step and target: the median over repeats of every figure, errors summed."""
    agg: dict = {}
    for step in steps:
        agg[step] = {}
        for name in targets:
            rs = [r for r in runs if r["step"] == step and r["target"] == name]
            if not rs:
                continue
            row = {
                "runs": len(rs),
                "rps": median_of([r.get("rps") for r in rs]),
                "requests": sum(r.get("requests") or 0 for r in rs),
                "errors": sum(r.get("errors") or 0 for r in rs),
                "cpu_us_per_req": median_of([r.get("cpu_us_per_req") for r in rs]),
                "sim_cpu_us_per_req": median_of([r.get("sim_cpu_us_per_req") for r in rs]),
                "backend_connections": median_of([r.get("backend_connections") for r in rs]),
            }
            for key in ("latency_ms", "ttft_ms", "itl_ms", "lag_ms", "transit_ms", "to_backend_ms", "first_back_ms"):
                if any(r.get(key) for r in rs):
                    row[key] = merge_percentiles([r.get(key) for r in rs])
            if any("affinity" in r for r in rs):
                row["affinity"] = median_of([r.get("affinity") for r in rs])
                backends: dict[str, int] = {}
                for r in rs:
                    for b, n in (r.get("backends") or {}).items():
                        backends[b] = backends.get(b, 0) + n
                row["backends"] = backends
            row["flagged"] = row["errors"] > 0 or not row["requests"] or not row.get(metric)
            agg[step][name] = row
    return agg


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
