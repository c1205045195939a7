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

Revokes by stamped header (``revoke_by_stamped_headers``) name stamps, not tasks, and Celery
keeps them in worker memory only too (``celery.worker.state.revoked_stamps``), so a worker
that reads a stamped task before the broadcast, or starts after it, runs the task. So:

- every such broadcast to all workers is recorded (``swf.task_revoke_stamped``);
- a worker process applies each record once to its ``revoked_stamps``, as the broadcast
  would: the records younger than its revoke expiry when it starts consuming, and the new
  ones before it hands over a batch holding a stamped message (a task sent right after the
  revoke is read after the record committed). Applied once, not kept in sync: what Celery
  or the user does to ``revoked_stamps`` afterwards (clearing it, say) stands, as it does
  for a broadcast.

Celery then discards the task as it discards any revoked one (state REVOKED, message acked).
This module touches the worker's revoked set only in a process where Celery's worker state
is loaded, i.e. a worker; plain kombu consumers are not affected.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from celery.utils.functional import maybe_list

from swf_celery.db import load_queries

QUERIES = load_queries("swf_celery.transport", "revokes.sql")
#: Celery's defaults (celery.worker.state) when its state module is not loaded.
DEFAULT_EXPIRES = 10800.0
DEFAULT_MAX = 50000
#: Seconds after which a stamp revoke record counts as settled: every record with a lower id
#: has committed by then (recording is one short statement), so it is not read again.
SETTLE = 60.0


def worker_revoked() -> Any:
    """The Celery worker's revoked set (``celery.worker.state.revoked``), or None outside a
    worker process."""
    return _worker_state("revoked")


def _worker_state(name: str) -> Any:
    state = sys.modules.get("celery.worker.state")
    return getattr(state, name, None) if state is not None else None


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


def _max_n(revoked: Any) -> int:
    return int(getattr(revoked, "maxlen", None) or DEFAULT_MAX)


def load(conn: psycopg.Connection[Any]) -> int:
    """Add the recorded revokes to this worker's revoked set, and apply the revokes by
    stamped header it has not applied yet; return how many ids were new."""
    revoked = worker_revoked()
    if revoked is None:
        return 0
    rows = conn.execute(QUERIES["load"], {"expires": _expires(revoked),
                                          "max_n": _max_n(revoked)}).fetchall()
    added = _add(revoked, rows)
    apply_stamps(conn)
    return added


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


class _StampRecords:
    """The stamp revoke records of one database this process applied: every id up to
    ``settled``, and the ids above it in ``applied`` (read again until they settle, so that
    a record committed after one with a higher id is not missed)."""

    def __init__(self) -> None:
        self.settled = 0
        self.applied: set[int] = set()


#: Per database (host, port, name): a process may consume from more than one.
_records: dict[tuple[str, int, str], _StampRecords] = {}
_records_lock = threading.Lock()


def apply_stamps(conn: psycopg.Connection[Any]) -> int:
    """Apply the revokes by stamped header recorded since this process last looked to the
    worker's ``revoked_stamps``, each once, as Celery applies the broadcast; return how many
    records were applied."""
    revoked, stamps = worker_revoked(), _worker_state("revoked_stamps")
    if revoked is None or stamps is None:
        return 0
    key = (conn.info.host, conn.info.port, conn.info.dbname)
    with _records_lock:
        records = _records.setdefault(key, _StampRecords())
        rows = conn.execute(QUERIES["stamps"], {
            "after": records.settled, "expires": _expires(revoked),
            "max_n": _max_n(revoked)}).fetchall()
        applied = 0
        settling = True
        for record_id, headers, age in rows:  # oldest first, as they were broadcast
            if record_id not in records.applied:
                _merge(stamps, headers)
                records.applied.add(record_id)
                applied += 1
            settling = settling and float(age) >= SETTLE
            if settling:
                records.settled = record_id
        records.applied = {i for i in records.applied if i > records.settled}
        return applied


def _merge(stamps: dict[str, Any], headers: dict[str, Any]) -> None:
    # What Celery's revoke_by_stamped_headers control command does with its headers.
    for header, values in headers.items():
        new = [None] if values is None else list(maybe_list(values))
        stamps[header] = list(maybe_list(stamps.get(header) or [])) + new


def stamped(message: Any) -> bool:
    """Whether ``message`` (a kombu message dict) carries stamps of Celery's protocol 2."""
    headers = message.get("headers") if isinstance(message, dict) else None
    return isinstance(headers, dict) and bool(headers.get("stamped_headers"))
