"""The kombu Transport of the ``swf://`` broker: connection, wake-ups and the consume loops.

Two consume loops share the read, arm and wake-up steps:

- inside an event loop (Celery's worker hub, ``implements.asynchronous``):
  :meth:`Transport.register_with_event_loop` registers the wake-up listener's NOTIFY
  descriptor and the self-pipe as readers; a readable one, or a timer (polling fallback,
  next delayed message due), runs
  :meth:`HubConsumer.drain <swf_celery.transport.eventloop.HubConsumer.drain>`, which
  delivers one batch per call and never blocks;
- plain kombu consumers call :meth:`Transport.drain_events`, which sleeps in ``poll()``.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import replace
from queue import Empty
from time import monotonic
from typing import Any

import psycopg
from kombu.transport import virtual
from psycopg import sql

from swf_celery.db import behind_pooler, kombu_url, load_queries, open_connection
from swf_celery.db.schema import require_current
from swf_celery.errors import DatabaseError, DatabaseUnavailable
from swf_celery.transport import revokes
from swf_celery.transport.channel import Channel
from swf_celery.transport.deliveries import Delivery
from swf_celery.transport.eventloop import HubConsumer
from swf_celery.transport.names import check_queue_name
from swf_celery.transport.options import Options
from swf_celery.transport.storage import KINDS, QueueStorage
from swf_celery.transport.visibility import VisibilityKeeper
from swf_celery.transport.wakeup import Wakeup

QUERIES = load_queries("swf_celery.transport")
DEFAULT_PORT = 5432
#: Queues whose names and statements are cached per transport (reply queues come and go).
_CACHE_LIMIT = 1000
#: Seconds between a consumer's re-reads of which consumed queues are limited.
LIMITED_RECHECK = 2.0


class Transport(virtual.Transport):
    """kombu transport over pgmq (see the package docstring for URL form and options)."""

    Channel = Channel
    # kombu declares these as None on the base class.
    client: Any
    channels: list[Any]  # type: ignore[assignment]
    cycle: Any

    default_port = DEFAULT_PORT  # type: ignore[assignment]
    driver_type = "swf"
    driver_name = "psycopg"
    can_parse_url = True  # the URL reaches dsn whole: its libpq parameters too

    implements = virtual.Transport.implements.extend(
        asynchronous=True,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )

    connection_errors = virtual.Transport.connection_errors + (
        psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable, OSError,
        # A session on a read-only server (a standby): reconnect, to the new primary.
        psycopg.errors.ReadOnlySqlTransaction,
    )  # type: ignore[assignment]
    channel_errors = virtual.Transport.channel_errors + (  # type: ignore[assignment]
        psycopg.DatabaseError, DatabaseError)

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.options = Options.parse(client.transport_options)
        if not self.options.event_loop:
            # Celery asks the instance whether it can run in the worker's event loop.
            self.implements = self.implements.extend(asynchronous=False)
        self.polling_interval = self.options.polling_interval
        self._conn: psycopg.Connection[Any] | None = None
        self._conn_lock = threading.Lock()
        self._wakeup: Wakeup | None = None
        self._keeper: VisibilityKeeper | None = None
        #: Messages handed over so far (:meth:`handed_over`).
        self.handovers = 0
        self._storages: dict[str, QueueStorage] = {}
        self._limited_checked = monotonic()
        self._indexed: set[str] = set()
        self._statements: dict[tuple[str, str], sql.Composed] = {}
        #: Queues declared with x-expires; consuming them keeps them alive (see _touch).
        self.expiring: set[str] = set()
        #: Drives the consumers when the transport runs in an event loop (Celery's hub).
        self._hub: HubConsumer | None = None
        self._revokes_loaded = False

    # -- connections ------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The kombu URL as a database URL, its ``?sslmode=…`` and ``listen_url`` parameters
        included (connections open it with :func:`swf_celery.db.open_connection`)."""
        return kombu_url(self.client)

    def pg_connection(self) -> psycopg.Connection[Any]:
        """The transport's autocommit PostgreSQL connection (opened on first use)."""
        conn = self._conn
        if conn is None or conn.closed:
            with self._conn_lock:
                if self._conn is None or self._conn.closed:
                    conn = open_connection(self.dsn, "broker")
                    # Consumer-side statements (read, ack, extend) need no WAL flush: after a
                    # server crash a lost read or ack only means a redelivery. Publishes set
                    # their own durability (option durable_publish); recording a revoke and
                    # dead-lettering set it on for their transaction (sql/functions). Not
                    # through a transaction pooler: a session setting would reach other
                    # clients.
                    if not behind_pooler(self.dsn):
                        conn.execute(QUERIES["session"])
                    self._conn = conn
                conn = self._conn
        return conn

    def storage(self, queue: str, expires_ms: int | None = None, *,
                refresh: bool = False) -> QueueStorage:
        """Where ``queue``'s messages live, creating the queue when missing."""
        found = None if refresh else self._storages.get(queue)
        if found is None:
            check_queue_name(queue)
            pgmq_name, kind, limited = self.pg_connection().execute(  # type: ignore[misc]
                QUERIES["ensure"], {"queue": queue, "expires_ms": expires_ms}).fetchone()
            if len(self._storages) >= _CACHE_LIMIT:
                self._storages.clear()
                self._statements.clear()
            if refresh:
                self.forget_queue(queue)
            found = self._storages[queue] = QueueStorage(queue, str(pgmq_name), str(kind),
                                                         bool(limited))
        return found

    def limited(self, queue: str) -> bool:
        """Whether ``queue``'s messages may carry flow keys (read by the limited read).

        A queue becomes limited when a publisher first sends it a message with a key
        (``swf.queue_mark_limited``); consumers re-read the marks of the queues they consume
        every :data:`LIMITED_RECHECK` seconds (one statement per process, not per read).
        Until then the plain read skips keyed messages, so none is delivered unlimited.
        """
        now = monotonic()
        if now - self._limited_checked > LIMITED_RECHECK:
            self._limited_checked = now
            queues = self.consumed() or [queue]
            rows = self.pg_connection().execute(QUERIES["limited"], {"queues": queues})
            marked = {str(r[0]) for r in rows}
            for name in queues:
                cached = self._storages.get(name)
                if cached is not None and cached.limited != (name in marked):
                    self._storages[name] = replace(cached, limited=name in marked)
        limited = self.storage(queue).limited
        if limited and queue not in self._indexed:
            # Once per consumer and queue: the indexes a mark made inside a transaction that
            # had written to the queue could not create (swf.queue_mark_limited).
            self._indexed.add(queue)
            self.pg_connection().execute(QUERIES["mark_limited"], {"queue": queue})
        return limited

    def mark_limited(self, queue: str, joined: psycopg.Connection[Any] | None = None) -> None:
        """Mark ``queue`` as limited (before publishing its first message with a flow key).

        ``joined``: the caller's transaction (``swf.transaction``), which the mark joins (the
        transaction may already hold the queue's table, which the mark's index needs); it is
        cached only once committed elsewhere, as a rollback takes it back.
        """
        storage = self.storage(queue)
        if storage.limited or storage.transient:
            return
        if joined is not None:
            joined.execute(QUERIES["mark_limited"], {"queue": queue})
            return
        self.pg_connection().execute(QUERIES["mark_limited"], {"queue": queue})
        self._storages[queue] = replace(storage, limited=True)

    def pgmq_name(self, queue: str, expires_ms: int | None = None, *,
                  refresh: bool = False) -> str:
        """The pgmq name of ``queue``, creating the queue when missing."""
        return self.storage(queue, expires_ms, refresh=refresh).pgmq_name

    def statement(self, kind: str, queue: str) -> sql.Composed:
        """Statement ``kind`` of storage.sql on ``queue``'s messages (cached)."""
        key = (kind, queue)
        stmt = self._statements.get(key)
        if stmt is None:
            stmt = self._statements[key] = self.storage(queue).statement(kind)
        return stmt

    def forget_queue(self, queue: str) -> None:
        """Drop the cached storage and statements of ``queue`` (dropped or recreated)."""
        self._storages.pop(queue, None)
        for kind in KINDS:
            self._statements.pop((kind, queue), None)

    def establish_connection(self) -> Any:
        """Connect and check that the database holds this code's schema and functions
        (:func:`swf_celery.db.schema.require_current`: a worker never runs on older SQL)."""
        require_current(self.pg_connection())
        return super().establish_connection()

    def close_connection(self, connection: Any) -> None:
        """Close channels (restoring unacked messages), threads and connections."""
        try:
            super().close_connection(connection)
        finally:
            if self._hub is not None:
                self._hub.close()
                self._hub = None
            if self._keeper is not None:
                self._keeper.stop()
                self._keeper = None
            if self._wakeup is not None:
                self._wakeup.close()
                self._wakeup = None
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def verify_connection(self, connection: Any) -> bool:
        """True while the transport's connection is open and not known to be broken.

        No round trip: kombu asks this before every publish (``Connection.connected``), as
        the AMQP transports answer it from local state. A connection that broke meanwhile
        fails its next statement, and kombu's retry reconnects.
        """
        conn = self._conn
        return conn is None or not (conn.closed or conn.broken)

    def driver_version(self) -> str:
        """psycopg's version."""
        return psycopg.__version__

    # -- wake-ups ---------------------------------------------------------------------------

    def wakeup(self) -> Wakeup:
        """The LISTEN connection and self-pipe (created on first use)."""
        if self._wakeup is None:
            self._wakeup = Wakeup(self.dsn, listening=self.options.wakeups)
        return self._wakeup

    def sleeper(self) -> tuple[str, int] | None:
        """(wake-up channel, backend pid) of the LISTEN session, when one is up (see
        :meth:`Wakeup.sleeper`); None otherwise. Any thread may ask."""
        wakeup = self._wakeup
        return wakeup.sleeper() if wakeup is not None else None

    def listen(self, channel: str) -> None:
        """LISTEN on a queue's wake-up channel."""
        self.wakeup().listen(channel)

    def poke(self) -> None:
        """Wake the consume loop (an ack freed prefetch capacity, a consumer started).

        In the event loop's own thread (Celery acks there) the loop is told directly, without
        the self-pipe's write, poll and read.
        """
        hub = self._hub
        if hub is not None and hub.in_loop_thread():
            hub.poked()
        elif self._wakeup is not None:
            self._wakeup.poke()

    # -- the asynchronous consume loop (kombu hub) ------------------------------------------

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Consume inside ``loop`` (Celery's worker hub): see :mod:`.eventloop`."""
        if self._hub is not None:
            self._hub.close()
        self._hub = HubConsumer(self, loop)

    def held(self) -> list[Delivery]:
        """The deliveries the channels hold unacknowledged."""
        held: list[Delivery] = []
        for channel in list(self.channels):
            held.extend(channel.held())
        return held

    def load_revokes(self) -> None:
        """Once per connection, in a Celery worker: load the recorded revokes
        (:mod:`.revokes`) before the first message is consumed."""
        if not self._revokes_loaded:
            self._revokes_loaded = True
            revokes.load(self.pg_connection())

    def flush_acks(self) -> None:
        """Write every channel's pending acks (also called by the keeper thread)."""
        for channel in list(self.channels):
            if channel._pending_acks:
                channel.flush_acks()

    def ensure_keeper(self) -> None:
        """Start the visibility keeper thread unless it runs."""
        if self._keeper is None or not self._keeper.is_alive():
            self._keeper = VisibilityKeeper(self, self.options.visibility_timeout,
                                            self.options.extend_every)
            self._keeper.start()

    def _deliver(self, message: Any, queue: str) -> None:
        self.ensure_keeper()
        super()._deliver(message, queue)

    def handed_over(self) -> None:
        """A message handed over with its wake-up was delivered (in the event loop's thread,
        the one writer): the keeper extends its claim (:data:`.handover.CLAIM`) to the
        visibility timeout at its next tick (:attr:`handovers` changed)."""
        self.handovers += 1

    def consumed(self) -> list[str]:
        """Every queue the channels consume (the keeper marks them as in use)."""
        return sorted({q for ch in list(self.channels) for q in list(ch._active_queues)})

    def consumed_expiring(self) -> list[str]:
        """Consumed queues declared with x-expires (kept alive by the keeper)."""
        return sorted({q for ch in list(self.channels) for q in list(ch._active_queues)
                       if q in self.expiring})

    def drain_events(  # type: ignore[override]
            self, connection: Any, timeout: float | None = None) -> None:
        """Deliver one batch; sleep on LISTEN (or poll) while there is nothing to read.

        Before sleeping, the consumed queues are armed (``swf.queue_arm``), which also reports
        whether a message became visible meanwhile (then we read again): a message committed
        meanwhile is either read or wakes us. Arming happens only on the way to sleep, never
        between a wake-up and the read it triggers.
        """
        start = monotonic()
        get = self.cycle.get
        armed = False
        due: float | None = None
        while True:
            try:
                get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            self.flush_acks()
            if self.options.wakeups and not armed:
                queues = sorted({q for ch in self.channels for q in ch.consumed_queues()})
                if queues:
                    row = self.pg_connection().execute(QUERIES["arm"],
                                                       {"queues": queues}).fetchone()
                    due = row[0] if row else None
                    armed = True
                    if due is not None and due <= 0:
                        # A message is visible (or a producer is committing): read again.
                        # Otherwise nothing was visible after arming, so we may sleep.
                        continue
            wait = self.polling_interval or 1.0
            if due is not None:
                wait = min(wait, due + 0.002)
            if timeout is not None:
                remaining = timeout - (monotonic() - start)
                if remaining <= 0:
                    raise TimeoutError()
                wait = min(wait, remaining)
            self.wakeup().wait(wait)
            armed, due = False, None
