"""Small statistics for benchmark tables, the machine's load, and starting load threads
together.

A ratio between two systems is computed round by round (both measured in the same round,
the rounds alternating which system goes first) and reported as the median of those
per-round ratios with every round shown (``ratio_text``); a figure is reported as the
median of its rounds with their range (``spread``). Each section that prints ratios records
the machine's load at its start and its end (``LoadProbe``).
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

T = TypeVar("T")

#: A section is marked as run on a loaded machine when, at its start, more than this share
#: of the cores is busy (with 2 cores: more than 1 core busy).
LOADED_SHARE = 0.5
#: Seconds over which the busy cores are sampled at a section's start.
SAMPLE_SECONDS = 3.0


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


def round_order(items: Sequence[T], round_no: int) -> list[T]:
    """The order in which round ``round_no`` (from 0) measures ``items``: as given in even
    rounds, reversed in odd ones, so that no system always goes first."""
    return list(items) if round_no % 2 == 0 else list(reversed(items))


def _measured(values: Sequence[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def median_of(rounds: Sequence[float]) -> float:
    """The median of the rounds that measured something (NaN marks a failed round); NaN when
    none did."""
    done = _measured(rounds)
    return statistics.median(done) if done else float("nan")


def _fmt(value: float, spec: str) -> str:
    return "failed" if math.isnan(value) else format(value, spec)


def spread(rounds: Sequence[float], spec: str) -> str:
    """``median (min–max)`` of the rounds, formatted with ``spec``; the median alone when the
    rounds agree to that precision."""
    done = _measured(rounds)
    if not done:
        return "failed"
    median, low, high = (_fmt(v, spec) for v in (median_of(done), min(done), max(done)))
    return median if low == high else f"{median} ({low}–{high})"


def per_round(rounds: Sequence[float], spec: str, suffix: str = "") -> str:
    """Every round's value, ``a / b / c``."""
    return " / ".join("failed" if math.isnan(v) else format(v, spec) + suffix
                      for v in rounds)


def ratios(ours: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """``ours[i] / theirs[i]`` for each round (NaN where either failed or the divisor is 0);
    both lists hold one value per round."""
    return [a / b if b and not (math.isnan(a) or math.isnan(b)) else float("nan")
            for a, b in zip(ours, theirs, strict=True)]


def ratio_text(rounds: Sequence[float], spec: str = ".2f") -> str:
    """``1.23x (rounds 1.10x / 1.23x / 1.40x)``: the median of per-round ratios, every round
    shown."""
    median = median_of(rounds)
    head = "failed" if math.isnan(median) else f"{median:{spec}}x"
    return f"{head} (rounds {per_round(rounds, spec, 'x')})"


class Load(NamedTuple):
    """Load average over 1 and 5 minutes, and the cores busy over a short sample (NaN when
    not sampled)."""

    one: float
    five: float
    busy: float


def _cpu_times() -> tuple[int, int]:
    """Busy and total jiffies of all cores since boot, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is counted in user already
    return total - idle, total


def cores_busy(seconds: float) -> float:
    """How many cores were busy, on average, over the next ``seconds``; NaN where
    ``/proc/stat`` cannot be read."""
    try:
        busy0, total0 = _cpu_times()
        time.sleep(seconds)
        busy1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return float("nan")
    cores = os.cpu_count() or 1
    return (busy1 - busy0) / max(1, total1 - total0) * cores


def read_load(sample: float = 0.0) -> Load:
    """The load averages now and, when ``sample`` > 0, the cores busy over ``sample``
    seconds."""
    try:
        with open("/proc/loadavg") as f:
            one, five = (float(x) for x in f.read().split()[:2])
    except (OSError, ValueError):
        one, five = os.getloadavg()[:2] if hasattr(os, "getloadavg") else (math.nan,) * 2
    return Load(one, five, cores_busy(sample) if sample > 0 else float("nan"))


def is_loaded(start: Load, cores: int | None = None) -> bool:
    """Whether a section starting at ``start`` ran on a loaded machine: more than
    ``LOADED_SHARE`` of the cores busy in the sample taken at its start, or (without a
    sample) a 1-minute load average above that. The sample, not the average, decides when
    there is one: the 1-minute average still counts the previous section's own processes
    for a minute or more after they stop."""
    limit = LOADED_SHARE * (cores or os.cpu_count() or 1)
    return (start.busy if not math.isnan(start.busy) else start.one) > limit


def load_note(start: Load, end: Load) -> str:
    """One Markdown line: the load averages (1 / 5 min) at the start and the end, the busy
    cores sampled at the start, and, on a loaded machine, a warning that the ratios are not
    comparable."""
    cores = os.cpu_count() or 1
    busy = ("" if math.isnan(start.busy) else
            f"; {start.busy:.1f} cores busy in a {SAMPLE_SECONDS:.0f} s sample at the start")
    note = (f"Machine load ({cores} cores): load average (1 / 5 min) {start.one:.2f} / "
            f"{start.five:.2f} at the start, {end.one:.2f} / {end.five:.2f} at the end (the "
            f"end counts this benchmark's own processes){busy}.")
    if is_loaded(start, cores):
        note = (f"**LOADED MACHINE: ratios below are not comparable** (more than "
                f"{LOADED_SHARE * cores:.1f} of {cores} cores busy at the start). " + note)
    return note


class LoadProbe:
    """The machine's load over a section: sampled when made (at the section's start, taking
    ``SAMPLE_SECONDS``), read again by ``note()`` at its end."""

    def __init__(self) -> None:
        self.start = read_load(SAMPLE_SECONDS)

    @property
    def loaded(self) -> bool:
        """Whether the section started on a loaded machine."""
        return is_loaded(self.start)

    def note(self) -> str:
        """``load_note`` from the start to now."""
        return load_note(self.start, read_load())
