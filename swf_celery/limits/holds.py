"""Holding a flow key until a time: ``swf.hold_key(key, until=…)``, ``swf.release_key``.

A held key's messages stay queued, unread, until the hold ends (a 429 with Retry-After, an
outage of the API behind the key); other keys of the same queues go on. From inside a task::

    except RateLimited as exc:
        swf.hold_key(f"tenant:{tenant}", until=exc.retry_after)
        raise self.retry(countdown=exc.retry_after)

Workers (from inside tasks) and operators may hold and release keys; everyone reads them.
Without ``repo``, the database is the current Celery app's (inside a task: the worker's).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from swf_celery.db import Database, DatabaseHandle, database_url, load_queries, resolve
from swf_celery.errors import ArgumentError

QUERIES = load_queries(__package__)


@dataclass(frozen=True)
class HeldKey:
    """A flow key held until a time."""

    key: str
    until: dt.datetime
    reason: str | None
    by: str | None


def _database(repo: DatabaseHandle | None) -> Database:
    """``repo``, else the current Celery app's database (inside a task: the worker's), else
    ``$SWF_DATABASE_URL`` or the embedded server."""
    if repo is not None:
        return resolve(repo)
    from celery import _state

    task = _state.get_current_task()
    app = task.app if task is not None else _state.get_current_app()
    return resolve(database_url(app=app).url)


def _until(until: dt.datetime | dt.timedelta | float | int) -> dt.datetime:
    now = dt.datetime.now(dt.timezone.utc)
    if isinstance(until, dt.datetime):
        return until if until.tzinfo is not None else until.replace(tzinfo=dt.timezone.utc)
    if isinstance(until, dt.timedelta):
        return now + until
    if isinstance(until, int | float) and not isinstance(until, bool):
        return now + dt.timedelta(seconds=float(until))  # seconds from now (Retry-After)
    raise ArgumentError(f"until must be a datetime, a timedelta or seconds from now, "
                        f"not {type(until).__name__}")


def hold_key(key: str, until: dt.datetime | dt.timedelta | float | int, *,
             reason: str | None = None, repo: DatabaseHandle | None = None) -> dt.datetime:
    """Hold ``key``'s messages until ``until`` (a datetime, a timedelta or seconds from now,
    as a Retry-After header gives them); returns the end of the hold."""
    if not isinstance(key, str) or not key:
        raise ArgumentError(f"key must be a non-empty text, not {key!r}")
    when = _until(until)
    result: dt.datetime = _database(repo).fetch_value(
        QUERIES["hold_key"], {"key": key, "until": when, "reason": reason})
    return result


def release_key(key: str, repo: DatabaseHandle | None = None) -> bool:
    """End ``key``'s hold now; False when it was not held."""
    return bool(_database(repo).fetch_value(QUERIES["release_key"], {"key": key}))


def held_keys(repo: DatabaseHandle | None = None) -> list[HeldKey]:
    """The keys held now, the soonest released first."""
    db = _database(repo)
    with db.single_statement() as conn:
        rows: list[Any] = conn.execute(QUERIES["held_keys"]).fetchall()
    return [HeldKey(r[0], r[1], r[2], r[3]) for r in rows]


@dataclass(frozen=True)
class KeyStats:
    """A flow key of a limited queue now: messages queued and deliveries held, the limits
    its newest message carries, its hold and the tokens left in its bucket."""

    queue: str
    key: str
    queued: int
    held: int
    rate: float | None
    concurrency: int | None
    held_until: dt.datetime | None
    held_reason: str | None
    tokens: float | None


def key_stats(repo: DatabaseHandle | None = None, limit: int = 200) -> list[KeyStats]:
    """The flow keys of every limited queue (busiest first, at most ``limit`` per queue);
    the caller must be allowed to read the queues (a worker, an operator)."""
    db = _database(repo)
    with db.single_statement() as conn:
        rows: list[Any] = conn.execute(QUERIES["key_stats"], {"limit": limit}).fetchall()
    return [KeyStats(*r) for r in rows]
