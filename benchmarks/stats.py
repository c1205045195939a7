"""Small statistics for benchmark tables, and starting load threads together."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) of ``values`` by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[rank]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p95/mean of durations given in seconds, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95),
            "mean": statistics.fmean(ms) if ms else float("nan")}


def run_together(work: Callable[[threading.Barrier], None], count: int) -> float:
    """Run ``work(barrier)`` in ``count`` threads; each calls ``barrier.wait()`` when ready
    (after its own set-up). Returns the ``perf_counter`` time at which all were released,
    once every thread has finished."""
    barrier = threading.Barrier(count + 1)
    threads = [threading.Thread(target=work, args=(barrier,)) for _ in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return start
