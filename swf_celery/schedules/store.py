"""The schedule's rows: the Python API behind ``swf.schedules`` and ``swf-celery schedules``.

Every change is one call of a function of ``sql/functions/schedules.sql`` (the worker's
part, or an operator's); beat processes see it at their next tick, without a restart.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from swf_celery.db import DatabaseHandle, ErrorMap, load_queries, resolve
from swf_celery.errors import ScheduleError, ScheduleNotFound
from swf_celery.schedules import codec, entries
from swf_celery.schedules.entries import Entry

QUERIES = load_queries("swf_celery.schedules")
_ERRORS: ErrorMap = {pg_errors.InvalidParameterValue: ScheduleError}
#: What an update may change (the name is the entry's key).
_CHANGEABLE = entries.KEYS - {"relative"}


def now() -> dt.datetime:
    """The current time, aware (UTC)."""
    return dt.datetime.now(dt.timezone.utc)


def first_tick(schedule: dict[str, Any], app: Any = None,
               after: dt.datetime | None = None) -> dt.datetime:
    """An entry's first tick after ``after`` (default: now), as Celery's scheduler counts
    a new entry (last run: now)."""
    return codec.next_after(codec.decode(schedule, app), after or now())


def put(name: str, given: Mapping[str, Any], *, source: str = "api", app: Any = None,
        repo: DatabaseHandle | None = None, reset: bool = False,
        after: dt.datetime | None = None) -> Entry:
    """Create entry ``name`` or change it to ``given`` (keys of a ``beat_schedule`` entry).

    A new entry (or a changed schedule, or ``reset``) runs first at its first tick after
    ``after`` (default: now)."""
    entry = entries.definition(name, given, app)
    db = resolve(repo)
    with db.connection(errors=_ERRORS) as conn:
        row = conn.cursor(row_factory=dict_row).execute(QUERIES["put"], {
            "name": name, "entry": Jsonb(entry), "source": source, "reset": reset,
            "next_run_at": first_tick(entry["schedule"], app, after)}).fetchone()
    assert row is not None
    return Entry.from_row(row)


def add(name: str, *, schedule: Any, task: str | None = None, workflow: Any = None,
        args: Any = (), kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None, input: Mapping[str, Any] | None = None,
        missed: str = "once", max_missed: int = 100, skip_if_running: bool = False,
        paused: bool = False, app: Any = None, repo: DatabaseHandle | None = None) -> Entry:
    """Add entry ``name``: ``task`` (a Celery task's name) or ``workflow`` (a workflow class
    or its ``"module:Class"``, started with ``input``) on ``schedule`` (a Celery crontab or
    schedule, seconds, a ``timedelta`` or cron text such as ``"*/5 * * * *"``).

    ``missed`` is the missed-tick policy (``once``, ``all`` up to ``max_missed``, ``skip``);
    ``skip_if_running`` skips a workflow's tick while its previous run is in progress.
    Raises :class:`ScheduleError` when the entry is invalid or the name is taken.
    """
    if _find(name, repo) is not None:
        raise ScheduleError(f"schedule entry {name!r} exists: use update() to change it")
    given: dict[str, Any] = {
        "schedule": schedule, "args": list(args), "kwargs": dict(kwargs or {}),
        "options": dict(options or {}), "missed": missed, "max_missed": max_missed,
        "skip_if_running": skip_if_running, "paused": paused}
    if task is not None:
        given["task"] = task
    if workflow is not None:
        given["workflow"] = workflow
        given["input"] = dict(input or {})
    return put(name, given, app=app, repo=repo)


def update(name: str, *, app: Any = None, repo: DatabaseHandle | None = None,
           **changes: Any) -> Entry:
    """Change entry ``name``: any of :func:`add`'s keyword arguments. A new schedule
    starts from now; otherwise the next run is kept."""
    unknown = set(changes) - _CHANGEABLE
    if unknown:
        raise ScheduleError(f"cannot update {sorted(unknown)} of schedule entry {name!r}; "
                            f"changeable: {sorted(_CHANGEABLE)}")
    current = get(name, repo)
    given: dict[str, Any] = {
        "schedule": current.schedule, "args": current.args, "kwargs": current.kwargs,
        "options": current.options, "missed": current.missed,
        "max_missed": current.max_missed, "skip_if_running": current.skip_if_running}
    given["task" if current.task is not None else "workflow"] = \
        current.task if current.task is not None else current.workflow
    if "task" in changes:
        given.pop("workflow", None)
    if "workflow" in changes:
        given.pop("task", None)
    if "input" in changes:
        given["kwargs"] = changes.pop("input")
    given.update(changes)
    return put(name, given, source=current.source, app=app, repo=repo)


def pause(name: str, repo: DatabaseHandle | None = None) -> None:
    """Pause entry ``name``: no tick fires until :func:`resume`."""
    _set_paused(name, True, None, repo)


def resume(name: str, *, app: Any = None, repo: DatabaseHandle | None = None) -> None:
    """Resume entry ``name`` at its first tick from now (the ticks of the pause never run)."""
    current = get(name, repo)
    _set_paused(name, False, first_tick(current.schedule, app), repo)


def delete(name: str, repo: DatabaseHandle | None = None) -> None:
    """Delete entry ``name`` and its ticks."""
    if not resolve(repo).fetch_value(QUERIES["delete"], {"name": name}, errors=_ERRORS):
        raise ScheduleNotFound(f"no schedule entry named {name!r}")


def get(name: str, repo: DatabaseHandle | None = None) -> Entry:
    """Entry ``name`` with its last tick; :class:`ScheduleNotFound` when there is none."""
    found = _find(name, repo)
    if found is None:
        raise ScheduleNotFound(f"no schedule entry named {name!r}")
    return found


def list_entries(repo: DatabaseHandle | None = None) -> list[Entry]:
    """Every entry, by name, each with its last tick and that tick's state."""
    return _select(None, repo)


def ticks(name: str, limit: int = 20, repo: DatabaseHandle | None = None
          ) -> list[dict[str, Any]]:
    """The latest ``limit`` ticks of entry ``name``, newest first."""
    with resolve(repo).connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        return list(cur.execute(QUERIES["ticks"], {"name": name, "limit": limit}).fetchall())


def prune(keep: list[str], repo: DatabaseHandle | None = None) -> int:
    """Delete the entries from a beat's configuration that ``keep`` no longer names."""
    return int(resolve(repo).fetch_value(QUERIES["prune"], {"keep": keep}, errors=_ERRORS))


def _set_paused(name: str, paused: bool, next_run_at: dt.datetime | None,
                repo: DatabaseHandle | None) -> None:
    if not resolve(repo).fetch_value(QUERIES["pause"], {
            "name": name, "paused": paused, "next_run_at": next_run_at}, errors=_ERRORS):
        raise ScheduleNotFound(f"no schedule entry named {name!r}")


def _find(name: str, repo: DatabaseHandle | None) -> Entry | None:
    found = _select(name, repo)
    return found[0] if found else None


def _select(name: str | None, repo: DatabaseHandle | None) -> list[Entry]:
    with resolve(repo).connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        return [Entry.from_row(row)
                for row in cur.execute(QUERIES["entries"], {"name": name}).fetchall()]
