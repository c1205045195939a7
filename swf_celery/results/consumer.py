"""Wake waiting ``AsyncResult.get()`` / ``ResultSet.join()`` on PostgreSQL NOTIFY.

Celery's async result API (:class:`~celery.backends.asynchronous.AsyncBackendMixin`) asks a
*result consumer* to ``consume_from(task_id)``, ``cancel_for(task_id)`` and
``drain_events(timeout)``; this one does so over LISTEN on a dedicated connection, the way
Celery's Redis backend does over pub/sub.

- Each result has a channel of its own, :func:`result_channel` (``swfr_`` and 40 hex digits
  of the SHA-256 of the task id): storing a result NOTIFYs only that channel, with no
  payload (results can be any size), so only processes waiting for that result are woken.
- The LISTEN connection is the library's one LISTEN plumbing
  (:class:`swf_celery.db.listening.ListenConnection`), opened on the first wait: its own
  thread reads the socket into a buffer whether or not anyone waits, so a process that
  waited once and went idle never holds PostgreSQL's notification queue.
- The set of channels follows the ids waited for: a wait LISTENs on the channels of new
  ids (in one round trip, pipelined with a read of those results, which covers results
  stored before the LISTEN) and UNLISTENs, in the same round trip, the channels of ids
  nobody here waits for any more. That read is the only one before the NOTIFY: ``get()``
  reads a result first only when its channel was LISTENed already (waited for before).
- When notifications may have been missed (the connection was re-established, or the
  database skipped NOTIFYs because its queue was too full) the listener reports a gap and
  every id still waited for is read, so no result is missed.
- A NOTIFY only names a channel: the result is read from ``swf.task_results``, so a forged
  one costs a read and delivers nothing.
- Several threads may wait at once: one takes the notifications, the others wait on a
  condition that it signals after each batch.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

from celery import states
from celery.backends.asynchronous import BaseResultConsumer
from celery.utils.log import get_logger

from swf_celery import db
from swf_celery.db.listening import ListenConnection
from swf_celery.errors import SwfError

logger = get_logger(__name__)

#: Prefix of the per-result NOTIFY channels (see :func:`result_channel`).
CHANNEL_PREFIX = "swfr_"
#: Channels of results nobody waits for any more are UNLISTENed with the next LISTEN, or at
#: once when this many have gathered.
STALE_LIMIT = 1000
#: Longest single wait on the socket: a drain without timeout still returns now and then,
#: so Celery's drain loop can check readiness and the caller's ``on_interval``.
MAX_WAIT = 1.0
APPLICATION_NAME = db.application_name("listen")

QUERIES = db.load_queries(__package__)


def result_channel(task_id: str) -> str:
    """The NOTIFY channel of ``task_id``'s result (the SQL of ``store_result`` computes the
    same name)."""
    return CHANNEL_PREFIX + hashlib.sha256(task_id.encode("utf-8")).hexdigest()[:40]


class ResultConsumer(BaseResultConsumer):
    """Celery result consumer over per-result LISTEN channels (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscribed: set[str] = set()
        #: channel -> task id of every channel in the listener's LISTEN set.
        self._listening: dict[str, str] = {}
        self._listener: ListenConnection | None = None
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
        # The result may have been ready before we waited. Ids whose channels are not yet
        # LISTENed need no read here: the drain's LISTEN reads them in the same round trip.
        # Ids LISTENed already (waited for before, their NOTIFY perhaps taken then) are read.
        ids = [r.id for r in getattr(result, "results", None) or [result]]
        if all(t in self._subscribed and result_channel(t) not in self._listening
               for t in ids):
            return
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
                # Another thread takes the notifications; it wakes us after each batch.
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
        listener = self._connection()
        try:
            if self._sync_listens(listener):
                return  # results stored before the LISTEN were delivered: no need to wait
            items = listener.take(timeout)
            if not items:
                return
            # Whatever else has arrived by now joins this batch (one query for all).
            items += listener.take()
            if any(item.gap is not None for item in items):
                # Notifications may have been missed (a reconnect, skipped NOTIFYs): read
                # every result still waited for.
                wanted = set(self._subscribed)
            else:
                listening = self._listening
                wanted = {listening[i.channel] for i in items
                          if i.channel in listening} & self._subscribed
            if wanted:
                rows = listener.execute(QUERIES["get_results"], {"task_ids": list(wanted)})
                if rows is not None:  # None: the connection dropped; its gap reads them
                    self._deliver_rows(rows)
        except SwfError as exc:
            logger.warning("result listener: reading results failed (%s)", exc)

    def _sync_listens(self, listener: ListenConnection) -> bool:
        """LISTEN on the channels of ids waited for, UNLISTEN the others, and read the
        newly listened ids' results, in one round trip; True when one was delivered."""
        want = {result_channel(t): t for t in list(self._subscribed)}
        listening = self._listening
        new = [c for c in want if c not in listening]
        stale = [c for c in listening if c not in want]
        if not new and len(stale) < STALE_LIMIT:
            return False
        new_ids = [want[c] for c in new]
        for c in stale:
            del listening[c]
        for c in new:
            listening[c] = want[c]
        rows = listener.listen(new, unlisten=stale,
                               query=QUERIES["get_results"] if new else None,
                               params={"task_ids": new_ids} if new else None)
        # None: the connection is down; the reconnect LISTENs them and reports a gap, on
        # which every id waited for is read.
        return bool(rows and self._deliver_rows(rows))

    def _connection(self) -> ListenConnection:
        if os.getpid() != self._pid:
            self.on_after_fork()
        listener = self._listener
        if listener is None or listener.closed:
            self._listening = {}
            # Connects in its own thread, with back-off while the server is away: the
            # ids waited for are LISTENed and read by the next _sync_listens, or on the
            # gap its connection reports.
            listener = self._listener = ListenConnection(
                self.backend.dsn, name="swf-results-waiter", connect=False)
        return listener

    def _deliver_rows(self, rows: list[Any]) -> int:
        for _task_id, payload in rows:
            self.on_state_change(self.backend.decode_result(payload), None)
        return len(rows)

    # -- lifecycle -------------------------------------------------------------------------

    def on_after_fork(self) -> None:
        # The parent's listener reads as closed here and is never closed by this process
        # (that would end the parent's session).
        self._listener = None
        self._listening = {}
        self._pid = os.getpid()
        self._reset_sync()
        super().on_after_fork()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        self._listening = {}
        if listener is not None:
            listener.close()
