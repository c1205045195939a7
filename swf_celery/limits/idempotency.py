"""Idempotent publish: one task per idempotency key within a window.

``apply_async(..., headers={"idempotency_key": k})`` (or the task option ``idempotency_key``,
a text or a function of the task's arguments; ``idempotency_window`` seconds, default a day)
publishes once per key: the broker claims the key for the message's task id in the same
statement that stores the message (``swf.idempotency_claim``), so a second publish within the
window stores nothing, whatever process, thread or retry it comes from.

Celery's ``apply_async`` returns the id it generated before publishing; only a task class can
return another one. Tasks of :class:`Task` (``Celery(..., task_cls="swf_celery:Task")`` or
``@app.task(base=swf.Task)``) claim the key first, in the transaction that publishes, and a
second publish returns the FIRST task's ``AsyncResult``. Workflow runs take the same keys
(``Executor.execute(..., idempotency_key=k)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from celery import Task as CeleryTask
from celery.utils import uuid
from psycopg import pq

from swf_celery.db import Database, load_queries, resolve
from swf_celery.db.transaction import current as current_transaction
from swf_celery.db.transaction import transaction
from swf_celery.db.urls import database_url
from swf_celery.errors import ArgumentError
from swf_celery.limits.keys import idempotency_key_for

QUERIES = load_queries(__package__)
#: Seconds a key holds when no window is given (a day).
DEFAULT_WINDOW = 86400.0
#: What a key can name.
SCOPES = ("task", "run")


def check_window(window: Any) -> float:
    """``window`` as seconds > 0; :class:`ArgumentError` otherwise."""
    if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
        raise ArgumentError(f"idempotency_window must be a number of seconds > 0, not {window!r}")
    return float(window)


def claim(conn: psycopg.Connection[Any], scope: str, key: str, claimant: str,
          window: float = DEFAULT_WINDOW) -> str:
    """Claim ``key`` for ``claimant`` in ``conn``'s transaction; the id that holds it (the
    claimant's own when the claim is new)."""
    if scope not in SCOPES:
        raise ArgumentError(f"idempotency scope must be one of {SCOPES}, not {scope!r}")
    row = conn.execute(QUERIES["claim"], {"scope": scope, "key": key, "id": claimant,
                                          "window": check_window(window)}).fetchone()
    return str(row[0]) if row else claimant


@contextlib.contextmanager
def once(db: Database) -> Iterator[psycopg.Connection[Any]]:
    """A transaction (a savepoint inside ``swf.transaction``) whose library writes go through
    one connection: a claim and what it guards commit or vanish together; raise
    :class:`psycopg.Rollback` inside to undo both."""
    with db.connection() as conn:
        if (conn is current_transaction() and not conn.autocommit
                and conn.info.transaction_status == pq.TransactionStatus.IDLE):
            # The caller's transaction has not begun (psycopg begins it with its first
            # statement): begin it, so that the block below is a savepoint inside it rather
            # than a transaction of its own that would commit at its end.
            conn.execute(QUERIES["begin"])
        with conn.transaction(), transaction(conn):
            yield conn


class Task(CeleryTask):  # type: ignore[misc]
    """A Celery task whose ``apply_async`` with an idempotency key returns the first task.

    The second publish of a key within its window publishes nothing and returns the
    ``AsyncResult`` of the first task (same id, same result).
    """

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None,
                    producer: Any = None, link: Any = None, link_error: Any = None,
                    shadow: Any = None, **options: Any) -> Any:
        """As Celery's, publishing once per idempotency key (see the module docstring)."""
        headers = options.get("headers")
        key = idempotency_key_for(self, args, kwargs, headers)
        if key is None or self.app.conf.task_always_eager:
            return super().apply_async(args, kwargs, task_id, producer, link, link_error,
                                       shadow, **options)
        window = (headers or {}).get("idempotency_window",
                                     getattr(self, "idempotency_window", None))
        window = DEFAULT_WINDOW if window is None else check_window(window)
        task_id = task_id or uuid()
        options["headers"] = {**(headers or {}), "idempotency_key": key,
                              "idempotency_window": window}
        db = resolve(database_url(app=self.app).url)
        with once(db) as conn:
            holder = claim(conn, "task", key, task_id, window)
            if holder == task_id:
                return super().apply_async(args, kwargs, task_id, producer, link, link_error,
                                           shadow, **options)
        return self.AsyncResult(holder)
