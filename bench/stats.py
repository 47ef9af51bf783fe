"""Percentiles on the grid every driver reports, in milliseconds.

The grid matches what bench/lua/done.lua asks of wrk, so wrk runs and the asyncio drivers land
in one table and one plot. Percentiles are nearest-rank on the raw samples: no histogram
bucketing, so p99.9 of a run is one of its real requests.
"""

from __future__ import annotations

import math
import random
import statistics

GRID = ("50", "75", "90", "95", "99", "99.5", "99.9", "99.99", "100")  # percent
TABLE = ("50", "90", "99", "99.9")  # the columns the report prints


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """{percent: milliseconds} from samples in seconds; {} when there are none."""
    if not samples_s:
        return {}
    xs = sorted(samples_s)
    return {p: round(rank(xs, float(p)) * 1e3, 4) for p in GRID}


def median_of(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def merge_percentiles(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per-percentile median over repeated runs: the aggregate row of a target."""
    runs = [r for r in runs if r]
    if not runs:
        return {}
    return {p: median_of([r.get(p) for r in runs]) for p in GRID if any(p in r for r in runs)}


def median(xs):
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def paired(first, second, resamples=2000, seed=0):
    """(median, low, high) of ``second[i] / first[i]`` over rounds i whose two runs went back to
    back: the median ratio and the 2.5th and 97.5th percentiles of the medians of
    ``resamples`` bootstrap resamples of the rounds (seeded: the same samples give the same
    interval). A round's two runs share the machine's state of the moment, which moves the
    medians of whole runs by more than the effects asked about (5-10% on a shared VM)."""
    ratios = sorted(b / a for a, b in zip(first, second))
    rng = random.Random(seed)
    n = len(ratios)
    medians = sorted(median([ratios[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    return median(ratios), medians[int(0.025 * (resamples - 1))], medians[int(0.975 * (resamples - 1))]


def rank(xs, percent):
    """The nearest-rank ``percent`` percentile of ``xs`` (sorted): 99.9% of 1000 is rank 999,
    not 1000."""
    return xs[max(1, math.ceil(percent * len(xs) / 100.0 - 1e-9)) - 1]


def pooled(first, second, percent=99.0, resamples=1000, seed=0):
    """(the ``percent`` percentile of every round's samples of ``second`` together, the same of
    ``first``'s, the difference, and its 2.5th and 97.5th bootstrap percentiles): ``first[i]``
    and ``second[i]`` are round i's samples of two runs that went back to back. A run of a few
    seconds at 50 req/s has some 250 requests, so its own p99 is its third-worst: the median of
    rounds' p99s moves by tenths of a millisecond between sittings. Pooled, the rounds' requests
    give one p99 of thousands, and the rounds are resampled in pairs for its interval."""
    def pool(rounds, picks):
        return sorted(x for i in picks for x in rounds[i])

    n = len(first)
    everything = range(n)
    a, b = rank(pool(first, everything), percent), rank(pool(second, everything), percent)
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        diffs.append(rank(pool(second, picks), percent) - rank(pool(first, picks), percent))
    diffs.sort()
    return a, b, b - a, diffs[int(0.025 * (resamples - 1))], diffs[int(0.975 * (resamples - 1))]
