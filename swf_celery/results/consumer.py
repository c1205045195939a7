"""Wake waiting ``AsyncResult.get()`` / ``ResultSet.join()`` on PostgreSQL NOTIFY.

Celery's async result API (:class:`~celery.backends.asynchronous.AsyncBackendMixin`) asks a
*result consumer* to ``consume_from(task_id)``, ``cancel_for(task_id)`` and
``drain_events(timeout)``; this one does so over ``LISTEN swf_results`` on a dedicated
connection, the way Celery's Redis backend does over pub/sub.

- NOTIFY carries a task id, never a payload (results can be any size); ids we wait for
  are read from ``swf.task_results`` in one query per batch of notifications.
- Subscribing is local: one LISTEN per process, notifications for ids nobody here waits
  for are dropped without a query.
- A lost connection is re-opened (with back-off) and every id still waited for is read
  from the table, so a result stored while the listener was away is not missed. The
  same read follows the first LISTEN, covering results stored before it.
- Several threads may wait at once: one reads the socket, the others wait on a condition
  that the reader signals after each batch.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
from celery import states
from celery.backends.asynchronous import BaseResultConsumer
from celery.utils.log import get_logger

from swf_celery import db

logger = get_logger(__name__)

CHANNEL = "swf_results"
#: Longest single wait on the socket: a drain without timeout still returns now and then,
#: so Celery's drain loop can check readiness and the caller's ``on_interval``.
MAX_WAIT = 1.0
#: Back-off between reconnect attempts while the server is unreachable.
RECONNECT_INTERVAL = 0.25
APPLICATION_NAME = db.application_name("listen")

QUERIES = db.load_queries(__package__)

# Connections inherited from a parent process: closing them would end the parent's
# sessions (libpq sends Terminate on the shared socket), so a forked child keeps them
# referenced and never touches them.
_inherited: list[Any] = []


class ResultConsumer(BaseResultConsumer):
    """Celery result consumer over ``LISTEN swf_results`` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscribed: set[str] = set()
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = os.getpid()
        self._reset_sync()

    def _reset_sync(self) -> None:
        self._cond = threading.Condition()
        self._reading = False

    # -- subscription (called by AsyncBackendMixin and on_task_call) ----------------------

    def start(self, initial_task_id: str, **kwargs: Any) -> None:
        self.consume_from(initial_task_id)

    def consume_from(self, task_id: str) -> None:
        # Local only: the process LISTENs once, so nothing to send. set.add is atomic.
        self._subscribed.add(task_id)

    def cancel_for(self, task_id: str) -> None:
        # Runs from AsyncResult.__del__, so it must never block.
        self._subscribed.discard(task_id)

    def on_state_change(self, meta: dict[str, Any], message: Any) -> None:
        super().on_state_change(meta, message)
        if meta["status"] in states.READY_STATES:
            self.cancel_for(meta["task_id"])

    def on_wait_for_pending(self, result: Any, **kwargs: Any) -> None:
        # Read what is already stored: the result may have been ready before we waited.
        for meta in result._iter_meta(**kwargs):
            if meta is not None:
                self.on_state_change(meta, None)
                # A READY meta for a result resolved already may sit in the buffer
                # forever (nobody will take it): drop it, as Celery's Redis backend does.
                if meta["status"] in (states.SUCCESS, states.FAILURE):
                    pending = self.backend._pending_messages
                    try:
                        buf = pending.pop(meta["task_id"])
                    except KeyError:
                        pass
                    else:
                        pending.total -= len(buf)

    # -- waiting ---------------------------------------------------------------------------

    def drain_events(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` for results; deliver those that arrived."""
        with self._cond:
            if self._reading:
                # Another thread reads the socket; it wakes us after each batch.
                self._cond.wait(MAX_WAIT if timeout is None else min(timeout, MAX_WAIT))
                return
            self._reading = True
        try:
            self._drain(MAX_WAIT if timeout is None else min(timeout, MAX_WAIT))
        finally:
            with self._cond:
                self._reading = False
                self._cond.notify_all()

    def _drain(self, timeout: float) -> None:
        conn = self._connection()
        if conn is None:
            time.sleep(min(timeout, RECONNECT_INTERVAL))
            return
        try:
            ids: set[str] = set()
            for notify in conn.notifies(timeout=timeout, stop_after=1):
                ids.add(notify.payload)
            if not ids:
                return
            # Whatever else has arrived by now joins this batch (one query for all).
            for notify in conn.notifies(timeout=0):
                ids.add(notify.payload)
            if "" in ids:  # an id too long for a NOTIFY payload: re-read everything
                wanted = set(self._subscribed)
            else:
                wanted = ids & self._subscribed
            if wanted:
                self._deliver(conn, wanted)
        except psycopg.Error as exc:
            logger.warning("result listener lost its connection (%s); reconnecting", exc)
            self._drop_connection()

    def _connection(self) -> psycopg.Connection[Any] | None:
        if os.getpid() != self._pid:
            self.on_after_fork()
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = db.open_connection(self.backend.dsn, "listen")
            conn.execute(f"LISTEN {CHANNEL}")  # constant identifier, not user input
            self._conn = conn
            # Results stored before LISTEN (or while we were disconnected) sent their
            # NOTIFY to nobody: read every id still waited for.
            if self._subscribed:
                self._deliver(conn, set(self._subscribed))
            return conn
        except psycopg.Error as exc:
            logger.warning("result listener cannot connect (%s); retrying", exc)
            self._drop_connection()
            return None

    def _deliver(self, conn: psycopg.Connection[Any], task_ids: set[str]) -> None:
        rows = conn.execute(QUERIES["get_results"], {"task_ids": list(task_ids)}).fetchall()
        for _task_id, payload in rows:
            self.on_state_change(self.backend.decode_result(payload), None)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass

    # -- lifecycle -------------------------------------------------------------------------

    def on_after_fork(self) -> None:
        if self._conn is not None:
            _inherited.append(self._conn)
            self._conn = None
        self._pid = os.getpid()
        self._reset_sync()
        super().on_after_fork()

    def stop(self) -> None:
        self._drop_connection()
