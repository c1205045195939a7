"""The kombu Transport of the ``swf://`` broker: connection, wake-ups and the consume loop."""

from __future__ import annotations

import contextlib
import socket
import threading
from queue import Empty
from time import monotonic
from typing import Any

import psycopg
from kombu.transport import virtual
from psycopg.conninfo import make_conninfo

from swf_celery import queries
from swf_celery.db import normalize_dsn
from swf_celery.errors import DatabaseError, DatabaseUnavailable, SchemaNotMigrated
from swf_celery.transport.channel import Channel
from swf_celery.transport.listener import Listener
from swf_celery.transport.options import Options
from swf_celery.transport.visibility import VisibilityKeeper

_Q = queries.load("swf_celery.transport", "queries.sql")
DEFAULT_PORT = 5432


class Transport(virtual.Transport):
    """kombu transport over pgmq (see the package docstring for URL form and options)."""

    Channel = Channel

    default_port = DEFAULT_PORT
    driver_type = "swf"
    driver_name = "psycopg"
    can_parse_url = False

    implements = virtual.Transport.implements.extend(
        asynchronous=False,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )

    connection_errors = virtual.Transport.connection_errors + (
        psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable, OSError,
    )
    channel_errors = virtual.Transport.channel_errors + (psycopg.DatabaseError, DatabaseError)

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.options = Options.parse(client.transport_options)
        self.polling_interval = self.options.polling_interval
        self._conn: psycopg.Connection[Any] | None = None
        self._conn_lock = threading.Lock()
        self._listener: Listener | None = None
        self._keeper: VisibilityKeeper | None = None

    # -- connections ------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """libpq connection string built from the kombu URL (``swf://`` or ``postgresql://``)."""
        c = self.client
        vhost = (c.virtual_host or "").lstrip("/")
        params: dict[str, Any] = {
            "host": c.hostname or "localhost",
            "port": c.port or DEFAULT_PORT,
            "user": c.userid or None,
            "password": c.password or None,
            "dbname": vhost or None,
            "application_name": "swf-celery broker",
        }
        return normalize_dsn(make_conninfo(**{k: v for k, v in params.items() if v}))

    def db(self) -> psycopg.Connection[Any]:
        """The transport's autocommit connection (opened on first use)."""
        conn = self._conn
        if conn is None or conn.closed:
            with self._conn_lock:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.dsn, autocommit=True)
                conn = self._conn
        return conn

    def establish_connection(self) -> Any:
        """Connect and check that the swf schema carries the broker's functions."""
        if not self.db().execute(_Q["schema_ready"]).fetchone()[0]:  # type: ignore[index]
            raise SchemaNotMigrated(
                "the database has no swf broker functions: run `swf-celery migrate` "
                "against the broker URL first")
        return super().establish_connection()

    def close_connection(self, connection: Any) -> None:
        """Close channels (restoring unacked messages), threads and connections."""
        try:
            super().close_connection(connection)
        finally:
            if self._keeper is not None:
                self._keeper.stop()
                self._keeper = None
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def verify_connection(self, connection: Any) -> bool:
        """True when a trivial query succeeds."""
        try:
            self.db().execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def driver_version(self) -> str:
        """psycopg's version."""
        return psycopg.__version__

    # -- wake-ups ---------------------------------------------------------------------------

    def listener(self) -> Listener:
        """The LISTEN connection and self-pipe (created on first use)."""
        if self._listener is None:
            self._listener = Listener(self.dsn)
        return self._listener

    def listen(self, channel: str) -> None:
        """LISTEN on a queue's wake-up channel."""
        self.listener().listen(channel)

    def poke(self) -> None:
        """Wake the consume loop (an ack freed prefetch capacity)."""
        if self._listener is not None:
            self._listener.poke()

    def _held(self) -> list[tuple[str, int]]:
        pairs: list[tuple[str, int]] = []
        for channel in list(self.channels):
            pairs.extend(channel.held())
        return pairs

    def _ensure_keeper(self) -> None:
        if self._keeper is None or not self._keeper.is_alive():
            self._keeper = VisibilityKeeper(self.dsn, self._held,
                                            self.options.visibility_timeout,
                                            self.options.extend_every)
            self._keeper.start()

    def _deliver(self, message: Any, queue: str) -> None:
        self._ensure_keeper()
        super()._deliver(message, queue)

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver one batch; sleep on LISTEN (or poll) while there is nothing to read."""
        start = monotonic()
        get = self.cycle.get
        while True:
            try:
                get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            wait = self.polling_interval or 1.0
            due = [ch.next_visible for ch in self.channels
                   if ch._consumers and ch.next_visible is not None]
            if due:
                wait = min(wait, min(due) + 0.002)
            if timeout is not None:
                remaining = timeout - (monotonic() - start)
                if remaining <= 0:
                    raise socket.timeout()
                wait = min(wait, remaining)
            self.listener().wait(wait)
