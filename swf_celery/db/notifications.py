"""PostgreSQL's notification queue: how full it is, who holds it, and NOTIFYs skipped.

Every NOTIFY the library sends goes through ``swf.notify_hint`` or ``swf.notify_required``
(``sql/functions/notifications.sql``). PostgreSQL trims its one notification queue only up
to the slowest listener, so a session that LISTENs and stops reading makes it grow until
every COMMIT that NOTIFYs fails. A hint (a wake-up, a workflow event, a result's or a
channel message's announcement) is therefore skipped while the queue is over
``swf.notify_queue_limit()`` (half) full: the transaction commits without it, readers fall
back to their timed poll or re-read the tables, and listeners report a gap. The skip is
counted in the database (sequence ``swf.notify_skips``) and told to the sending session as
a NOTICE with SQLSTATE :data:`SKIP_SQLSTATE`.

- :func:`notification_health` reports the queue's usage, the skips so far and the sessions
  likely to hold the queue (for ``swf-celery doctor`` and operators);
- :func:`log_skips` makes a connection log those notices as a warning, at most once per
  :data:`WARN_EVERY` seconds per process: the pool and the dedicated connections of
  :mod:`.connections` have it, so an engine or broker process says when its NOTIFYs are
  being skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from swf_celery.db.queries import load_queries

log = logging.getLogger(__name__)
QUERIES = load_queries(__package__, "notifications.sql")

#: SQLSTATE of the NOTICE ``swf.notify_hint`` sends when it skips a NOTIFY.
SKIP_SQLSTATE = "01SWF"
#: Least seconds between two warnings of skipped NOTIFYs in one process.
WARN_EVERY = 60.0
#: Seconds a session must have been idle in a transaction (or blocked writing to its client)
#: before :func:`notification_health` names it.
STALLED_AFTER = 60.0


@dataclass(frozen=True)
class Suspect:
    """A session that may hold the notification queue (see :func:`notification_health`)."""

    pid: int
    database: str | None
    role: str | None
    application_name: str | None
    client_addr: str | None
    #: ``pg_stat_activity.state``: ``idle in transaction`` or ``idle`` (writing to its client).
    state: str | None
    #: ``wait_event_type:wait_event`` (``Client:ClientWrite`` for one its client does not read).
    wait_event: str | None
    #: Seconds since its transaction began (or it went idle).
    seconds: float
    query: str | None


@dataclass(frozen=True)
class NotificationHealth:
    """What :func:`notification_health` reports."""

    #: ``pg_notification_queue_usage()``: the fraction of the queue in use, 0 to 1.
    usage: float
    #: ``swf.notify_queue_limit()``: from this usage on, hints are skipped.
    limit: float
    #: NOTIFYs skipped since the database was migrated to schema 17.
    skipped: int
    #: Sessions likely to hold the queue, longest first.
    suspects: tuple[Suspect, ...]

    @property
    def skipping(self) -> bool:
        """True while hints are being skipped (the queue is at or over its limit)."""
        return self.usage >= self.limit


def notification_health(conn: psycopg.Connection[Any], *,
                        stalled_after: float = STALLED_AFTER) -> NotificationHealth:
    """The notification queue's usage, the NOTIFYs skipped so far, and the sessions idle in a
    transaction (or blocked writing to their client) for ``stalled_after`` seconds or more.

    PostgreSQL does not show which sessions LISTEN, so the suspects are candidates: a
    session in them that LISTENs holds the queue (PostgreSQL's own log names one too, "NOTIFY
    queue is N% full" with its pid). The queue is the server's: sessions of every database
    count. A role without ``pg_read_all_stats`` sees only its own sessions' states.
    """
    usage, limit, skipped = conn.execute(QUERIES["usage"]).fetchone()  # type: ignore[misc]
    rows = conn.execute(QUERIES["suspects"], {"after": float(stalled_after)}).fetchall()
    return NotificationHealth(float(usage), float(limit), int(skipped),
                              tuple(Suspect(*row) for row in rows))


def skipped_count(conn: psycopg.Connection[Any]) -> int | None:
    """NOTIFYs skipped so far, or None where the count cannot be read (a database not
    migrated to schema 17, a role without the grant)."""
    try:
        row = conn.execute(QUERIES["skipped"]).fetchone()
    except (pg_errors.UndefinedFunction, pg_errors.UndefinedTable,
            pg_errors.InvalidSchemaName, pg_errors.InsufficientPrivilege):
        return None
    return int(row[0]) if row else None


class _SkipWarning:
    """The process's rate-limited warning of skipped NOTIFYs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._since = 0

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        if diag.sqlstate != SKIP_SQLSTATE:
            return
        now = time.monotonic()
        with self._lock:
            self._since += 1
            if now - self._last < WARN_EVERY:
                return
            self._last, count, self._since = now, self._since, 0
        log.warning("%s (%d skipped by this process since the last warning): wake-ups and "
                    "events arrive late until the listener reads again; %s",
                    diag.message_primary, count, diag.message_hint or "")


_warn_skip = _SkipWarning()


def log_skips(conn: psycopg.Connection[Any]) -> None:
    """Log the database's notices of skipped NOTIFYs on ``conn`` (rate-limited, see the
    module docstring); other notices are left alone."""
    conn.add_notice_handler(_warn_skip)
