"""Visibility extension: messages a live consumer holds never reappear while it holds them.

A daemon thread per consuming transport extends, every third of ``visibility_timeout``, the
visibility of every message held unacknowledged by the transport's channels (prefetched,
waiting for an ETA, or running with ``acks_late``), on a connection of its own. When the
process dies the extensions stop and its messages reappear after ``visibility_timeout``.

Every second it also marks the consumed queues declared with ``x-expires`` (pidbox, events) as
in use, even while the consuming thread is blocked in a long task (solo pool), writes acks the
consuming thread has not written yet, and every ten seconds drops the expiring queues nobody
consumed for that long (``swf.queue_reap``).
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

if TYPE_CHECKING:
    from swf_celery.transport.transport import Transport

logger = logging.getLogger(__name__)
QUERIES = load_queries("swf_celery.transport")
REAP_EVERY = 10.0
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
        self._vt = visibility_timeout
        self._interval = interval
        self._stopped = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._last_reap = 0.0

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
        self._close()

    def tick(self, *, force: bool = False) -> int:
        """One round of upkeep; returns how many held messages were extended."""
        # Acks are written by the consuming thread before it reads or sleeps; a consumer
        # that does neither (basic_get, then a long pause) gets them written here.
        transport = self._transport()
        if transport is None:
            return 0
        transport.flush_acks()
        conn = self._connection()
        expiring = transport.consumed_expiring()
        if expiring:
            conn.execute(QUERIES["touch"], {"queues": expiring})
        now = time.monotonic()
        if now - self._last_reap >= REAP_EVERY:
            self._last_reap = now
            conn.execute(QUERIES["reap"])
        extended = 0
        if not force and now - self._last_extend < self._interval:
            return 0
        self._last_extend = now
        pairs = transport.held()
        del transport
        if pairs:
            queues = [q for q, _ in pairs]
            ids = [i for _, i in pairs]
            extended = conn.execute(QUERIES["extend"], {"queues": queues, "ids": ids,
                                                   "vt": self._vt}
                                    ).fetchone()[0]  # type: ignore[index]
        return int(extended)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = open_connection(self._dsn, "broker")
        return self._conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
