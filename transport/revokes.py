"""Revokes that hold: revoked task ids kept in PostgreSQL and handed to the Celery worker.

Celery keeps revoked ids in worker memory (``celery.worker.state.revoked``, a set whose items
expire after ``CELERY_WORKER_REVOKE_EXPIRES`` seconds, 3 h by default). A task whose message
a worker held when it was revoked (a near ETA/countdown, a prefetched message) is given back
when that worker stops, and a restarted worker, its memory empty, would run it. So:

- every revoke broadcast through the broker is recorded (``swf.task_revoke``, with the
  deletion of the task's queued messages);
- a worker loads the recorded ids younger than its revoke expiry into its revoked set when
  it starts consuming (``celery inspect revoked`` lists them), stamped with their age so they
  expire when they would have in memory;
- a redelivered message (given back at a stop, or reappearing after a dead worker's
  visibility timeout) is checked against the table before it is delivered; a first delivery
  needs no check, since a revoke deletes every queued message of the task.

Celery then discards the task as it discards any revoked one (state REVOKED, message acked).
This module touches the worker's revoked set only in a process where Celery's worker state
is loaded, i.e. a worker; plain kombu consumers are not affected.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

import psycopg

from swf_celery.db import load_queries

QUERIES = load_queries("swf_celery.transport", "revokes.sql")
#: Celery's defaults (celery.worker.state) when its state module is not loaded.
DEFAULT_EXPIRES = 10800.0
DEFAULT_MAX = 50000


def worker_revoked() -> Any:
    """The Celery worker's revoked set (``celery.worker.state.revoked``), or None outside a
    worker process."""
    state = sys.modules.get("celery.worker.state")
    return getattr(state, "revoked", None) if state is not None else None


def _expires(revoked: Any) -> float:
    return float(getattr(revoked, "expires", None) or DEFAULT_EXPIRES)


def _add(revoked: Any, rows: Iterable[tuple[str, float]]) -> int:
    now = time.monotonic()
    added = 0
    # Oldest first, so that a full set purges the oldest, as Celery does.
    for task_id, age in sorted(rows, key=lambda r: -float(r[1])):
        if task_id not in revoked:
            revoked.add(task_id, now=now - max(0.0, float(age)))
            added += 1
    return added


def load(conn: psycopg.Connection[Any]) -> int:
    """Add the recorded revokes to this worker's revoked set; return how many were new."""
    revoked = worker_revoked()
    if revoked is None:
        return 0
    max_n = int(getattr(revoked, "maxlen", None) or DEFAULT_MAX)
    rows = conn.execute(QUERIES["load"], {"expires": _expires(revoked),
                                          "max_n": max_n}).fetchall()
    return _add(revoked, rows)


def check(conn: psycopg.Connection[Any], task_ids: list[str]) -> list[str]:
    """Which of ``task_ids`` (of redelivered messages) are revoked; they are added to this
    worker's revoked set, so Celery discards them on delivery or when their ETA comes."""
    revoked = worker_revoked()
    if revoked is None or not task_ids:
        return []
    rows = conn.execute(QUERIES["check"], {"ids": task_ids,
                                           "expires": _expires(revoked)}).fetchall()
    _add(revoked, rows)
    return [r[0] for r in rows]
