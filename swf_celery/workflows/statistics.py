"""Execution statistics per flow and per step, computed by SQL over the runs kept.

:func:`workflow_statistics` reads the runs started in a time window (default: the last
hour; retention bounds what is kept) and returns, per flow, its runs, success rate and
run duration p50/p95/max, and per step its runs, success rate, skips, attempts, duration
p50/p95/max and queue wait p50/p95 (from when an attempt was due to when it started). Two
queries (``flow_stats``, ``step_stats`` in ``queries.sql``); durations are milliseconds.
Shown by ``swf-celery runs stats`` and on the console's flow page.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from swf_celery.db import DatabaseHandle, load_queries, resolve
from swf_celery.errors import ArgumentError

QUERIES = load_queries(__package__)
DEFAULT_WINDOW_S = 3600.0


@dataclass(frozen=True)
class StepStatistics:
    """One step of a flow over the window."""

    name: str
    runs: int
    completed: int
    failed: int
    skipped: int
    #: Attempts made (a step retried twice counts 3).
    attempts: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None
    queue_wait_p50_ms: float | None
    queue_wait_p95_ms: float | None


@dataclass(frozen=True)
class FlowStatistics:
    """One flow over the window: its runs and its steps."""

    workflow_slug: str
    runs: int
    completed: int
    failed: int
    cancelled: int
    active: int
    #: Completed runs over finished ones (``None`` while none finished).
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None
    steps: list[StepStatistics] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _rate(good: int, total: int) -> float | None:
    return round(good / total, 4) if total else None


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def workflow_statistics(repo: DatabaseHandle | None = None, *,
                        workflow_slug: str | None = None,
                        window: float | dt.timedelta = DEFAULT_WINDOW_S
                        ) -> list[FlowStatistics]:
    """Statistics of the runs started in the last ``window`` (seconds or a timedelta), of
    one flow or of every flow; see the module docstring."""
    seconds = window.total_seconds() if isinstance(window, dt.timedelta) else window
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
        raise ArgumentError(f"window must be seconds > 0 or a timedelta, not {window!r}")
    params = {"slug": workflow_slug,
              "since": dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)}
    with resolve(repo).connection() as conn:
        flows = conn.execute(QUERIES["flow_stats"], params).fetchall()
        steps = conn.execute(QUERIES["step_stats"], params).fetchall()
    by_flow: dict[str, list[StepStatistics]] = {}
    for (slug, name, runs, done, failed, skipped, attempts, p50, p95, top, w50,
         w95) in steps:
        by_flow.setdefault(slug, []).append(StepStatistics(
            name, runs, done, failed, skipped, int(attempts or 0),
            _rate(done, done + failed), _ms(p50), _ms(p95), _ms(top), _ms(w50), _ms(w95)))
    return [FlowStatistics(slug, runs, done, failed, cancelled, active,
                           _rate(done, done + failed + cancelled), _ms(p50), _ms(p95),
                           _ms(top), by_flow.get(slug, []))
            for slug, runs, done, failed, cancelled, active, p50, p95, top in flows]
