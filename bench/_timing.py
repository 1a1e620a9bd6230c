"""Timing shared by the benchmarks: every case runs once per round, the rounds interleave the
cases so that a shared machine's noise falls on all of them alike, and the median is reported."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    runs: dict[str, Callable[[], object]], rounds: int, warm_up: bool = True
) -> dict[str, float]:
    """Median seconds of each case over ``rounds`` interleaved rounds (after one warm-up call of
    each case unless ``warm_up`` is false, for cases too slow to run twice for nothing)."""
    if warm_up:
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}
