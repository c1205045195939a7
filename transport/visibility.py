"""Visibility extension: messages a live consumer holds never reappear while it holds them.

A daemon thread per transport extends, every third of ``visibility_timeout``, the visibility
of every message held unacknowledged by the transport's channels (prefetched, waiting for an
ETA, or running with ``acks_late``), on a connection of its own. When the process dies the
extensions stop and its messages reappear after ``visibility_timeout``. The same thread drops
queues declared with ``x-expires`` that nobody consumed for that long (``swf.queue_reap``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg

from swf_celery import queries

logger = logging.getLogger(__name__)
_Q = queries.load("swf_celery.transport", "queries.sql")
REAP_EVERY = 10.0


class VisibilityKeeper(threading.Thread):
    """Extends held messages every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, dsn: str, held: Callable[[], Iterable[tuple[str, int]]],
                 visibility_timeout: float, interval: float) -> None:
        super().__init__(name="swf-visibility", daemon=True)
        self._dsn = dsn
        self._held = held
        self._vt = visibility_timeout
        self._interval = interval
        self._stopped = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._last_reap = 0.0

    def stop(self) -> None:
        """Stop extending (the thread exits within one interval)."""
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self.tick()
            except psycopg.Error as exc:
                # The database may be restarting: kombu reconnects the consumer; here we
                # retry on the next tick with a fresh connection.
                logger.warning("swf broker: visibility extension failed: %s", exc)
                self._close()
        self._close()

    def tick(self) -> int:
        """Extend every held message once; returns how many were extended."""
        pairs = list(self._held())
        conn = self._connection()
        extended = 0
        if pairs:
            queues = [q for q, _ in pairs]
            ids = [i for _, i in pairs]
            extended = conn.execute(_Q["extend"], {"queues": queues, "ids": ids,
                                                   "vt": self._vt}).fetchone()[0]
        now = time.monotonic()
        if now - self._last_reap >= REAP_EVERY:
            self._last_reap = now
            conn.execute(_Q["reap"])
        return int(extended)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, autocommit=True)
        return self._conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
