"""Moving a schedule in from the old schedulers: Celery's shelve file, django-celery-beat.

Each imported entry keeps its name, task, arguments, routing and schedule, and resumes after
its last run there (then the missed-tick policy, ``once`` by default, decides what a gap
means); it is stored with source ``import``. Celery's own default entry
(``celery.backend_cleanup``) is left to beat, which adds it as Celery's scheduler does.
Entries that cannot be stored (arguments that are not JSON, a clocked one-off) are reported
and skipped, not half-imported.
"""

from __future__ import annotations

import datetime as dt
import json
import shelve
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from swf_celery.db import DatabaseHandle
from swf_celery.errors import ScheduleError
from swf_celery.schedules import store

_PERIODS = {"days", "hours", "minutes", "seconds", "microseconds"}
#: Entries Celery's scheduler adds by itself (our beat adds them as Celery's does): not
#: imported.
CELERY_DEFAULTS = frozenset({"celery.backend_cleanup"})


@dataclass
class ImportReport:
    """What an import stored and what it skipped (name -> why)."""

    imported: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def from_shelve(path: str, *, repo: DatabaseHandle | None = None, app: Any = None,
                dry_run: bool = False) -> ImportReport:
    """Import the entries of Celery's shelve schedule file ``path`` (``celerybeat-schedule``,
    as ``PersistentScheduler`` wrote it; give the name without the dbm suffix)."""
    try:
        db = shelve.open(path, flag="r")
    except Exception as exc:  # dbm's errors differ per backend
        raise ScheduleError(f"cannot open the shelve schedule {path!r}: {exc}") from None
    try:
        found = dict(db.get("entries") or {})
    finally:
        db.close()
    report = ImportReport()
    for name, entry in sorted(found.items()):
        if name in CELERY_DEFAULTS:
            continue
        given = {"task": entry.task, "schedule": entry.schedule, "args": list(entry.args or ()),
                 "kwargs": dict(entry.kwargs or {}), "options": dict(entry.options or {})}
        _store(report, name, given, entry.last_run_at, repo, app, dry_run)
    return report


def from_django(url: str, *, repo: DatabaseHandle | None = None, app: Any = None,
                dry_run: bool = False) -> ImportReport:
    """Import django-celery-beat's periodic tasks from the Django project's database ``url``
    (disabled ones are imported paused)."""
    report = ImportReport()
    for name, given, last_run_at, problem in _django_rows(url):
        if problem:
            report.skipped[name] = problem
            continue
        _store(report, name, given, last_run_at, repo, app, dry_run)
    return report


def _django_rows(url: str) -> Iterator[tuple[str, dict[str, Any], dt.datetime | None, str]]:
    try:
        with psycopg.connect(url) as conn:
            rows = conn.cursor(row_factory=dict_row).execute(
                store.QUERIES["django_tasks"]).fetchall()
    except psycopg.errors.UndefinedTable:
        raise ScheduleError(f"no django-celery-beat tables in {url.split('@')[-1]!r}") from None
    except psycopg.OperationalError as exc:
        raise ScheduleError(f"cannot reach the Django database: {exc}") from None
    for row in rows:
        name = row["name"]
        if row["clocked_id"] is not None or row["one_off"]:
            yield name, {}, None, "a clocked or one-off task (no repeating schedule)"
            continue
        if row["interval_every"] is not None:
            if row["interval_period"] not in _PERIODS:
                yield name, {}, None, f"unknown interval period {row['interval_period']!r}"
                continue
            schedule: Any = dt.timedelta(**{row["interval_period"]: row["interval_every"]})
        elif row["minute"] is not None:
            schedule = {"type": "crontab", **{k: row[k] for k in (
                "minute", "hour", "day_of_week", "day_of_month", "month_of_year")}}
        elif row["solar_event"] is not None:
            schedule = {"type": "solar", "event": row["solar_event"],
                        "lat": float(row["latitude"]), "lon": float(row["longitude"])}
        else:
            yield name, {}, None, "no schedule"
            continue
        try:
            options = {k: row[k] for k in ("queue", "exchange", "routing_key", "priority")
                       if row[k] not in (None, "")}
            headers = json.loads(row["headers"] or "{}")
            if headers:
                options["headers"] = headers
            given = {"task": row["task"], "schedule": schedule,
                     "args": json.loads(row["args"] or "[]"),
                     "kwargs": json.loads(row["kwargs"] or "{}"), "options": options,
                     "paused": not row["enabled"]}
        except ValueError as exc:
            yield name, {}, None, f"arguments are not JSON: {exc}"
            continue
        yield name, given, row["last_run_at"], ""


def _store(report: ImportReport, name: str, given: dict[str, Any],
           last_run_at: dt.datetime | None, repo: DatabaseHandle | None, app: Any,
           dry_run: bool) -> None:
    if last_run_at is not None and last_run_at.tzinfo is None:
        last_run_at = last_run_at.replace(tzinfo=dt.timezone.utc)
    try:
        if dry_run:
            from swf_celery.schedules import entries

            entries.definition(name, given, app)
        else:
            store.put(name, given, source="import", app=app, repo=repo, after=last_run_at,
                      reset=True)
    except ScheduleError as exc:
        report.skipped[name] = str(exc)
        return
    report.imported.append(name)
