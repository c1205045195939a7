"""Visibility extension: messages a live consumer holds never reappear while it holds them.

A daemon thread per consuming transport extends, every third of ``visibility_timeout`` (and
at the tick after a message was handed over with its wake-up, :mod:`.handover`), the
visibility of every message held unacknowledged by the transport's channels (prefetched,
waiting for an ETA, or running with ``acks_late``), on a connection of its own. Each extension
matches the delivery's receipt (:mod:`.deliveries`): a message delivered again elsewhere after
its visibility timeout lapsed here is not extended for its new holder by this one. When the
process dies the extensions stop and its messages reappear after ``visibility_timeout``.

Nothing ends the extensions while the transport lives: a tick that fails (the database
restarting, a connection terminated, any unexpected error) is logged, the keeper's connection
is opened afresh, and the extension is tried again at the next tick (a second later), not a
third of the visibility timeout later.

Extension comes first on every tick. Every second the keeper also marks the consumed
transient queues (pidbox, events, replies) as in use, even while the consuming thread is
blocked in a long task (solo pool), declares again with their bindings those that expired
meanwhile (a stall longer than their expiry), writes acks the consuming thread has not written
yet, and every ten seconds, on a tick that extended nothing, removes the expiring queues
nobody consumed for that long (``swf.queue_reap``: DML for transient queues; a legacy pgmq
table is dropped under a short ``lock_timeout`` and skipped while locked, e.g. by pg_dump).
Every minute it marks the consumed durable queues as well, so that retention, which removes
durable queues nobody used for weeks, never takes a queue a live worker consumes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import psycopg

from swf_celery.db import load_queries, open_connection
from swf_celery.errors import SwfError
from swf_celery.transport import transient

if TYPE_CHECKING:
    from swf_celery.transport.transport import Transport

logger = logging.getLogger(__name__)
QUERIES = load_queries("swf_celery.transport")
REAP_EVERY = 10.0
#: Seconds between marks of the consumed durable queues (``swf.queue_touch``).
MARK_EVERY = 60.0
TICK = 1.0


class VisibilityKeeper(threading.Thread):
    """Extends held messages every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, transport: Transport, visibility_timeout: float,
                 interval: float) -> None:
        super().__init__(name="swf-visibility", daemon=True)
        self._dsn = transport.dsn
        # Weak: a transport dropped without being closed must not be kept alive (and its
        # keeper stops with it).
        self._transport = weakref.ref(transport)
        self._last_extend = 0.0
        self._handovers = 0  # the transport's count of handed-over messages at the last tick
        self._vt = visibility_timeout
        self._interval = interval
        self._stopped = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._last_reap = 0.0
        self._last_mark: float | None = None

    def stop(self) -> None:
        """Stop extending (the thread exits within one interval)."""
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(min(TICK, self._interval)):
            if self._transport() is None:
                break
            try:
                self.tick()
            except (psycopg.Error, SwfError) as exc:
                # The database may be restarting: kombu reconnects the consumer; here we
                # retry on the next tick with a fresh connection.
                logger.warning("swf broker: visibility extension failed: %s", exc)
                self._close()
            except Exception:
                # Not ours to end: the held messages would reappear while their tasks run.
                logger.exception("swf broker: visibility keeper tick failed; trying again at "
                                 "the next tick")
                self._close()
        self._close()

    def tick(self, *, force: bool = False) -> int:
        """One round of upkeep; returns how many held messages were extended.

        Extending held messages comes first: nothing else here may delay it, and an extension
        that fails is due again at the next tick. Reaping expired queues runs on a tick that
        extended nothing, and its DDL (legacy pgmq queues only) gives up after a short
        ``lock_timeout`` instead of queueing behind a pg_dump.
        """
        transport = self._transport()
        if transport is None:
            return 0
        conn = self._connection()
        now = time.monotonic()
        extended = 0
        # Messages handed over with their wake-up are claimed for seconds only
        # (handover.CLAIM): extended at the first tick after their delivery.
        handovers = transport.handovers
        due = (force or handovers != self._handovers
               or now - self._last_extend >= self._interval)
        if due:
            held = transport.held()
            if held:
                extended = int(conn.execute(QUERIES["extend"], {
                    "queues": [d.queue for d in held], "ids": [d.msg_id for d in held],
                    "receipts": [d.receipt for d in held],
                    "vt": self._vt}).fetchone()[0])  # type: ignore[index]
                if extended < len(held):
                    logger.debug("swf broker: %d of %d held messages not extended: acked "
                                 "meanwhile, or delivered again since their visibility timeout "
                                 "lapsed here", len(held) - extended, len(held))
            self._last_extend = now
            self._handovers = handovers  # extended: a failed tick leaves them due
        # Acks are written by the consuming thread before it reads or sleeps; a consumer
        # that does neither (basic_get, then a long pause) gets them written here.
        transport.flush_acks()
        expiring = transport.consumed_expiring()
        touch = expiring
        if self._last_mark is None or now - self._last_mark >= MARK_EVERY:
            self._last_mark = now
            touch = transport.consumed()
        if touch:
            sleeper = transport.sleeper()
            alive = {r[0] for r in conn.execute(QUERIES["touch"], {
                "queues": touch, "pid": sleeper[1] if sleeper else None})}
            gone = [q for q in expiring if q not in alive]
            if gone:
                transient.redeclare(conn, transport, gone)
        # Reaping waits for a tick that extended nothing, unless hand-overs extend on every
        # tick: then it runs at a third of its pace.
        if now - self._last_reap >= (REAP_EVERY if not due else 3 * REAP_EVERY):
            self._last_reap = now
            self.reap(conn)
        return extended

    def reap(self, conn: psycopg.Connection[Any] | None = None) -> int:
        """Remove expired queues; returns how many (0 when a lock was busy: next pass)."""
        conn = conn or self._connection()
        return int(conn.execute(QUERIES["reap"]).fetchone()[0])  # type: ignore[index]

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = open_connection(self._dsn, "broker")
        return self._conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
