"""Wake waiting ``AsyncResult.get()`` / ``ResultSet.join()`` on PostgreSQL NOTIFY.

Celery's async result API (:class:`~celery.backends.asynchronous.AsyncBackendMixin`) asks a
*result consumer* to ``consume_from(task_id)``, ``cancel_for(task_id)`` and
``drain_events(timeout)``; this one does so over LISTEN on a dedicated connection, the way
Celery's Redis backend does over pub/sub.

- Each result has a channel of its own, :func:`result_channel` (``swfr_`` and 40 hex digits
  of the SHA-256 of the task id): storing a result NOTIFYs only that channel, with no
  payload (results can be any size), so only processes waiting for that result are woken.
- A process LISTENs only while it waits: the reading thread LISTENs on the channels of
  the ids waited for (in one round trip, pipelined with a read of those results, which
  covers results stored before the LISTEN) and UNLISTENs, in the same round trip, the
  channels of ids nobody here waits for any more. A process that called ``.get()`` once
  and went idle is left listening at most on channels of finished results, which are not
  notified again; so no LISTEN collects notifications that nobody reads, and PostgreSQL's
  notification queue is never held up by an idle client.
- A lost connection is re-opened (with back-off), LISTENs again and reads every id still
  waited for, so a result stored while the listener was away is not missed.
- Several threads may wait at once: one reads the socket, the others wait on a condition
  that the reader signals after each batch.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any

import psycopg
from celery import states
from celery.backends.asynchronous import BaseResultConsumer
from celery.utils.log import get_logger
from psycopg import sql

from swf_celery import db

logger = get_logger(__name__)

#: Prefix of the per-result NOTIFY channels (see :func:`result_channel`).
CHANNEL_PREFIX = "swfr_"
#: Channels of results nobody waits for any more are UNLISTENed with the next LISTEN, or at
#: once when this many have gathered.
STALE_LIMIT = 1000
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


def result_channel(task_id: str) -> str:
    """The NOTIFY channel of ``task_id``'s result (the SQL of ``store_result`` computes the
    same name)."""
    return CHANNEL_PREFIX + hashlib.sha256(task_id.encode("utf-8")).hexdigest()[:40]


class ResultConsumer(BaseResultConsumer):
    """Celery result consumer over per-result LISTEN channels (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscribed: set[str] = set()
        #: channel -> task id of every channel LISTENed on the current connection.
        self._listening: dict[str, str] = {}
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
            if self._sync_listens(conn):
                return  # results stored before the LISTEN were delivered: no need to wait
            # NOTIFYs that libpq parsed while reading a pipeline's results wait in its
            # queue, where notifies() (which first waits for the socket) would not see them.
            channels: set[str] = set()
            pgconn = conn.pgconn
            while (parsed := pgconn.notifies()) is not None:
                channels.add(parsed.relname.decode())
            if not channels:
                for notify in conn.notifies(timeout=timeout, stop_after=1):
                    channels.add(notify.channel)
            if not channels:
                return
            # Whatever else has arrived by now joins this batch (one query for all).
            for notify in conn.notifies(timeout=0):
                channels.add(notify.channel)
            listening = self._listening
            wanted = {listening[c] for c in channels if c in listening} & self._subscribed
            if wanted:
                self._deliver(conn, wanted)
        except psycopg.Error as exc:
            logger.warning("result listener lost its connection (%s); reconnecting", exc)
            self._drop_connection()

    def _sync_listens(self, conn: psycopg.Connection[Any]) -> bool:
        """LISTEN on the channels of ids waited for, UNLISTEN the others, and read the
        newly listened ids' results, in one round trip; True when one was delivered."""
        want = {result_channel(t): t for t in list(self._subscribed)}
        listening = self._listening
        new = [c for c in want if c not in listening]
        stale = [c for c in listening if c not in want]
        if not new and len(stale) < STALE_LIMIT:
            return False
        statements = [sql.SQL("UNLISTEN {}").format(sql.Identifier(c)) for c in stale]
        statements += [sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in new]
        new_ids = [want[c] for c in new]
        with conn.pipeline():
            for statement in statements:
                conn.execute(statement)
            cur = conn.execute(QUERIES["get_results"], {"task_ids": new_ids}) if new else None
        for c in stale:
            del listening[c]
        for c in new:
            listening[c] = want[c]
        return bool(cur is not None and self._deliver_rows(cur.fetchall()))

    def _connection(self) -> psycopg.Connection[Any] | None:
        if os.getpid() != self._pid:
            self.on_after_fork()
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            self._listening = {}
            self._conn = db.open_connection(self.backend.dsn, "listen")
            # Every id still waited for is LISTENed and read by the next _sync_listens.
            return self._conn
        except psycopg.Error as exc:
            logger.warning("result listener cannot connect (%s); retrying", exc)
            self._drop_connection()
            return None

    def _deliver(self, conn: psycopg.Connection[Any], task_ids: set[str]) -> None:
        rows = conn.execute(QUERIES["get_results"], {"task_ids": list(task_ids)}).fetchall()
        self._deliver_rows(rows)

    def _deliver_rows(self, rows: list[Any]) -> int:
        for _task_id, payload in rows:
            self.on_state_change(self.backend.decode_result(payload), None)
        return len(rows)

    def _drop_connection(self) -> None:
        self._listening = {}
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
        self._listening = {}
        self._pid = os.getpid()
        self._reset_sync()
        super().on_after_fork()

    def stop(self) -> None:
        self._drop_connection()
