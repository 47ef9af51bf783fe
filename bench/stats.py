"""Percentiles on the grid every driver reports, in milliseconds.

The grid matches what bench/lua/done.lua asks of wrk, so wrk runs and the asyncio drivers land
in one table and one plot. Percentiles are nearest-rank on the raw samples: no histogram
bucketing, so p99.9 of a run is one of its real requests.
"""

from __future__ import annotations

import math
import statistics

GRID = ("50", "75", "90", "95", "99", "99.5", "99.9", "99.99", "100")  # percent
TABLE = ("50", "90", "99", "99.9")  # the columns the report prints


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """{percent: milliseconds} from samples in seconds; {} when there are none."""
    if not samples_s:
        return {}
    xs = sorted(samples_s)
    n = len(xs)
    out = {}
    for p in GRID:
        rank = max(1, math.ceil(float(p) * n / 100.0 - 1e-9))  # 99.9% of 1000 is rank 999, not 1000
        out[p] = round(xs[rank - 1] * 1e3, 4)
    return out


def median_of(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def merge_percentiles(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per-percentile median over repeated runs: the aggregate row of a target."""
    runs = [r for r in runs if r]
    if not runs:
        return {}
    return {p: median_of([r.get(p) for r in runs]) for p in GRID if any(p in r for r in runs)}
