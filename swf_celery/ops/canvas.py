"""Cancelling plain Celery canvases (chains, groups, chords) by root id, and revoking.

Not workflows: a canvas has no coordinator, so the broker's queued messages are the whole
state. :func:`cancel_canvas` removes them in the database and revokes what workers hold;
:func:`revoke_tasks` sends Celery's revoke through a Celery app on the database's own
``swf://`` broker (the workflow lifecycle uses it too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swf_celery.db import Database, DatabaseHandle, broker_url, load_queries, resolve
from swf_celery.errors import ArgumentError

QUERIES = load_queries(__package__, "canvas.sql")


@dataclass(frozen=True)
class CanvasCancel:
    """What :func:`cancel_canvas` did: queued messages removed, task ids revoked."""

    removed: int
    revoked: list[str]


def cancel_canvas(root_id: str, repo: DatabaseHandle | None = None, *, app: Any = None,
                  terminate: bool = True) -> CanvasCancel:
    """Cancel a plain Celery chain, group or chord by its root id (``result.root_id``).

    Every queued message with that root id is removed from its queue (including delayed
    ETA/countdown messages) by an index on the root id, each queue table in one statement
    that also reports the messages workers hold: a message fetched while the cancel runs
    is revoked, never missed. The tasks of messages that workers hold are revoked with
    ``terminate=True`` by default: unlike a workflow run, whose coordinator ignores a
    cancelled step's late report, a plain chain would go on from a task that finishes, so
    a running task must be stopped (pass ``terminate=False`` to let running tasks finish).
    A chain stops there; a chord whose header tasks are gone never fires its body.
    """
    if not isinstance(root_id, str) or not root_id:
        raise ArgumentError(f"root_id must be a task id, not {root_id!r}")
    db = resolve(repo)
    row = db.fetch_one(QUERIES["cancel_canvas"], {"root_id": root_id})
    removed, held = (row[0], list(row[1] or [])) if row else (0, [])
    if held:
        revoke_tasks(db, held, app=app, terminate=terminate)
    return CanvasCancel(removed, held)


def revoke_tasks(db: Database, task_ids: list[str], *, app: Any = None,
                 terminate: bool = False) -> None:
    """Revoke ``task_ids`` through ``app``, by default a Celery app on ``db`` as broker.

    The revoke is also recorded in ``db`` (``swf.revoked_tasks``) first, so it holds across
    worker restarts even when ``app`` uses another broker.
    """
    from celery import Celery

    db.fetch_one(QUERIES["record_revokes"], {"task_ids": list(task_ids)})

    own = app is None
    if own:
        app = Celery("swf-cancel", broker=broker_url(db.dsn), set_as_current=False)
    try:
        app.control.revoke(task_ids, terminate=terminate)
    finally:
        if own:
            app.close()


