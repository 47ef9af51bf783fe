"""CPU time of a process tree, read from /proc: the bench's steadiest figure.

On a shared machine latency and req/s move with the neighbours' load, but the CPU a proxy spends
per request barely does. `tree_seconds(pids)` sums user + system time over processes and all
their descendants: live ones from their threads' run time in /proc/PID/task/TID/schedstat
(nanoseconds; utime/stime in /proc/PID/stat count 10 ms ticks, too coarse for a short run at a
few hundred requests per second), reaped ones through their parents' cutime/cstime, so a worker
that dies mid-run keeps its time in the total (proc(5): /proc/PID/stat fields 14-17). Where the
kernel has no schedstat the ticks of utime + stime stand in.
"""

from __future__ import annotations

import os

TICK = 1.0 / os.sysconf("SC_CLK_TCK")  # seconds per clock tick


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, CPU seconds of the process and its reaped children), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    reaped = (int(fields[13]) + int(fields[14])) * TICK
    live = run_ns(pid)
    own = live / 1e9 if live is not None else (int(fields[11]) + int(fields[12])) * TICK
    return int(fields[1]), own + reaped


def run_ns(pid: int) -> int | None:
    """Nanoseconds on CPU of the live threads of ``pid``, None without schedstat."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            if tid == str(pid):
                return None
    return total


def _parents() -> dict[int, list[int]]:
    """ppid -> child pids, for every process now alive."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def tree_pids(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """``root`` and all its live descendants."""
    children = _parents() if children is None else children
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_seconds(roots: list[int]) -> float:
    """User + system CPU seconds spent so far by the trees under ``roots``."""
    if not roots:
        return 0.0
    children = _parents()
    total = 0.0
    for root in roots:
        for pid in tree_pids(root, children):
            s = _stat(pid)
            if s is not None:
                total += s[1]
    return total
