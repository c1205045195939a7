"""psycopg's errors as ours: ONE SQLSTATE -> error map, and retrying while unreachable."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import psycopg
from psycopg import errors as pg_errors

from swf_celery.errors import (
    DatabaseError,
    DatabasePermissionError,
    DatabaseUnavailable,
    NotificationQueueFull,
    SwfError,
    TransactionConflict,
)

T = TypeVar("T")
#: psycopg error class -> our error class, for :meth:`Database.fetch_one`'s ``errors``.
ErrorMap = Mapping[type[psycopg.Error], type[SwfError]]


@contextlib.contextmanager
def translate_errors(errors: ErrorMap | None = None) -> Iterator[None]:
    """Re-raise psycopg errors as :class:`SwfError` subclasses with an actionable message.

    ``errors`` maps psycopg error classes to the caller's own error classes first.
    """
    try:
        yield
    except SwfError:
        raise
    except psycopg.Error as exc:
        for pg_class, swf_class in (errors or {}).items():
            if isinstance(exc, pg_class):
                raise swf_class(exc.diag.message_primary or str(exc)) from None
        raise _translate(exc) from exc


def _translate(exc: psycopg.Error) -> SwfError:
    """The SQLSTATE -> error map every caller shares."""
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return DatabasePermissionError(
            f"permission denied: {exc.diag.message_primary or exc}; grant the role the "
            "privilege or run the command as the database owner")
    if isinstance(exc, (pg_errors.DeadlockDetected, pg_errors.SerializationFailure,
                        pg_errors.LockNotAvailable)):
        # OperationalError subclasses, but the server is fine: a conflict to retry.
        return TransactionConflict(
            f"transaction conflict: {exc.diag.message_primary or exc}; retry the operation")
    if isinstance(exc, pg_errors.ProgramLimitExceeded):
        # An OperationalError subclass too, but a limit: retrying does not help.
        message = exc.diag.message_primary or str(exc)
        if "NOTIFY queue" in message or "notification queue" in message:
            return NotificationQueueFull(
                f"{message}: PostgreSQL's notification queue is full, so a session that "
                "LISTENs has stopped reading (swf_celery.db.notification_health names the "
                "likely ones)")
        return DatabaseError(f"PostgreSQL limit: {message}")
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        # A session on a standby (or on a primary being demoted): the pools discard it and
        # a retry reconnects, to the new primary with target_session_attrs=read-write.
        return DatabaseUnavailable(
            f"the server is read-only: {exc.diag.message_primary or exc}; list every server "
            "in the URL with target_session_attrs=read-write")
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return DatabaseUnavailable(
            f"cannot reach PostgreSQL: {first_line(exc)}; check that the server runs and "
            "SWF_DATABASE_URL points at it")
    return DatabaseError(f"PostgreSQL error: {str(exc).strip()}")


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when it has none (for logs)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def retry_unavailable(call: Callable[[], T], *, timeout: float) -> T:
    """Call ``call``; while the server is unreachable, retry with back-off for ``timeout`` s.

    Retry only idempotent or guarded work: a retry after a lost reply runs it again.
    The last :class:`DatabaseUnavailable` is raised when the time is up.
    """
    deadline = time.monotonic() + timeout
    pause = 0.0
    while True:
        try:
            return call()
        except DatabaseUnavailable:
            if time.monotonic() + pause > deadline:
                raise
            # A pool hands out its other (now dead) connections first: retry those at
            # once, then back off while the server is down.
            time.sleep(pause)
            pause = min(1.0, pause * 2 or 0.02)
