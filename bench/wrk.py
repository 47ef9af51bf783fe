"""wrk, the closed-loop driver of scenarios a and b.

wrk keeps a fixed number of connections busy, each sending its next request as soon as the last
answer ended: the right tool for "how many requests per second at most", and the wrong one for
latency under a given load (see bench/openloop.py). The scenario's Lua script (bench/lua/) sets
the request; bench/lua/done.lua is appended to it so wrk ends with one `FPBENCH {json}` line:
requests, error counts by kind, and latency percentiles in microseconds.

Errors as wrk sees them: non-2xx/3xx statuses and socket errors (connect, read, write, timeout).
A stream that breaks is a read error (fleetproxy closes a failed stream without its terminating
chunk). wrk does not look inside bodies: asking it to (a Lua `response` hook) costs it a good
share of its throughput, so in-band error events are counted by the asyncio drivers only.
"""

from __future__ import annotations

import json
import os
import shutil

LUA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")
PATH = "/v1/chat/completions"


def binary() -> str | None:
    return shutil.which("wrk")


def script(name: str, tmpdir: str) -> str:
    """The scenario's script with the reporting hook appended, written into ``tmpdir``."""
    with open(os.path.join(LUA_DIR, name)) as f:
        body = f.read()
    with open(os.path.join(LUA_DIR, "done.lua")) as f:
        done = f.read()
    path = os.path.join(tmpdir, f"wrk-{name}")
    with open(path, "w") as f:
        f.write(body + "\n" + done)
    return path


def argv(url: str, lua: str, duration: float, connections: int, threads: int = 1) -> list[str]:
    seconds = max(1, round(duration))  # wrk takes whole seconds
    return [binary() or "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
            "--timeout", "10s", "-s", lua, url.rstrip("/") + PATH]


def parse(output: str) -> dict:
    """The summary of one wrk run, in the shape the asyncio drivers write."""
    line = next((ln for ln in output.splitlines() if ln.startswith("FPBENCH ")), None)
    if line is None:
        raise ValueError("wrk printed no FPBENCH line:\n" + output[-2000:])
    raw = json.loads(line[len("FPBENCH "):])
    kinds = {k: raw[k] for k in ("connect", "read", "write", "timeout") if raw[k]}
    if raw["status"]:
        kinds["non-2xx/3xx"] = raw["status"]
    duration = raw["duration_us"] / 1e6
    requests = raw["requests"]
    errors = sum(kinds.values())
    return {
        "requests": requests,
        "ok": max(0, requests - raw["status"]),
        "errors": errors,
        "error_kinds": kinds,
        "duration_s": round(duration, 3),
        "rps": round(requests / duration, 2) if duration else 0.0,
        "bytes": raw["bytes"],
        "latency_ms": {p: round(us / 1e3, 4) for p, us in raw["percentiles_us"].items()},
        "mean_ms": round(raw["mean_us"] / 1e3, 4),
    }
