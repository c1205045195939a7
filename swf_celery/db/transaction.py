"""Enqueue inside the caller's own transaction: ``with swf.transaction(conn):``.

The broker is the user's database, so a message can simply be a row of the caller's
transaction. Inside the block, in this thread (a ``contextvars`` variable: threads and
asyncio tasks started elsewhere are not affected), everything the library writes goes
through the caller's connection instead of its own:

- ``apply_async`` / ``send_task`` on a ``swf://`` broker (the message INSERT; queue creation
  and other bookkeeping stay on the broker's own connection, outside the transaction);
- ``Executor.start`` / ``execute`` (the run, its steps and the messages of its root steps);
- ``send_with_notify`` (the message and its NOTIFY, delivered at COMMIT);
- any other call given a database handle (it joins rather than borrows a pooled connection).

Nothing is visible to workers before the caller commits, and nothing exists after a rollback.

``conn`` may be a psycopg 3 connection, a SQLAlchemy ``Connection`` or ``Session`` (on the
``postgresql+psycopg`` driver), or a Django connection (``django.db.connection``, PostgreSQL
backend on psycopg 3). Who commits: a connection already in a transaction (a psycopg
connection outside autocommit, a SQLAlchemy Connection or Session, Django inside
``transaction.atomic``) is committed by its owner as usual; an autocommit connection (psycopg
``autocommit=True``, Django outside ``atomic``) gets a transaction for the block, committed at
its end and rolled back when it raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import psycopg

from swf_celery.errors import ConfigurationError

_current: ContextVar[psycopg.Connection[Any] | None] = ContextVar("swf_transaction",
                                                                  default=None)


def current() -> psycopg.Connection[Any] | None:
    """The connection of the enclosing ``swf.transaction`` block in this context, or None."""
    return _current.get()


@contextlib.contextmanager
def transaction(conn: Any) -> Iterator[psycopg.Connection[Any]]:
    """Make the library's writes in this block part of ``conn``'s transaction.

    Yields the underlying psycopg connection. Raises
    :class:`~swf_celery.errors.ConfigurationError` for a connection that is not PostgreSQL on
    psycopg 3.
    """
    django_atomic = _django_atomic(conn)
    if django_atomic is not None:
        with django_atomic:
            with _joined(_django_connection(conn)) as pg:
                yield pg
        return
    pg = _psycopg_of(conn)
    if pg.autocommit:
        with pg.transaction(), _joined(pg):
            yield pg
    else:
        with _joined(pg):
            yield pg


@contextlib.contextmanager
def _joined(pg: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    token = _current.set(pg)
    try:
        yield pg
    finally:
        _current.reset(token)


def _psycopg_of(conn: Any) -> psycopg.Connection[Any]:
    """The psycopg connection under a psycopg, SQLAlchemy or raw DB-API connection."""
    if isinstance(conn, psycopg.Connection):
        return conn
    # A SQLAlchemy Session: its Connection (which begins the session's transaction).
    if hasattr(conn, "get_bind") and hasattr(conn, "connection") and callable(conn.connection):
        conn = conn.connection()
    # A SQLAlchemy Connection: make sure its transaction has begun, so that its commit()
    # commits what we write on the DB-API connection underneath.
    if hasattr(conn, "in_transaction") and hasattr(conn, "begin") and hasattr(conn, "engine"):
        if not conn.in_transaction():
            conn.begin()
        driver = conn.connection.driver_connection
        if isinstance(driver, psycopg.Connection):
            return driver
        raise ConfigurationError(
            "swf.transaction needs a SQLAlchemy connection on the psycopg 3 driver "
            f"('postgresql+psycopg://…'), not {type(driver).__name__}")
    raise ConfigurationError(
        "swf.transaction takes a psycopg connection, a SQLAlchemy Connection or Session, or a "
        f"Django connection, not {type(conn).__name__}")


def _django_atomic(conn: Any) -> Any:
    """``transaction.atomic`` of a Django connection (None for anything else)."""
    if not (hasattr(conn, "alias") and hasattr(conn, "ensure_connection")
            and hasattr(conn, "in_atomic_block")):
        return None
    from django.db import transaction as django_transaction

    return django_transaction.atomic(using=conn.alias)


def _django_connection(conn: Any) -> psycopg.Connection[Any]:
    conn.ensure_connection()
    raw = conn.connection
    if not isinstance(raw, psycopg.Connection):
        raise ConfigurationError(
            "swf.transaction needs Django's PostgreSQL backend on psycopg 3 (Django 4.2+ with "
            f"psycopg installed), not a {type(raw).__module__} connection")
    return raw
