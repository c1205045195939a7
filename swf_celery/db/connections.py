"""Connections: a "repo" argument resolved to ONE fork-safe pool per process, and the
one-statement helper every layer uses.

:func:`resolve` turns a repo (a DSN, a SQLAlchemy Engine using ``postgresql+psycopg``, a
psycopg ConnectionPool, a :class:`Database`, or None for :func:`~.urls.database_url`) into a
:class:`Database`. DSNs share one pool per process; a forked child (a prefork worker) opens
its own and never touches its parent's.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Union

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from swf_celery.db.errors import ErrorMap, translate_errors
from swf_celery.db.urls import database_url, normalize_dsn, redact
from swf_celery.errors import ConfigurationError

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool
    from sqlalchemy.engine import Engine

#: Most connections of a process's shared pool, unless ``$SWF_POOL_SIZE`` says otherwise.
DEFAULT_POOL_SIZE = 8

#: What every public function accepts as its ``repo`` argument.
Repo = Union[str, "Database", "Engine", "ConnectionPool"]


class Database:
    """A resolved database handle: hands out psycopg connections and knows its DSN.

    ``dsn`` is what LISTEN connections and worker subprocesses use; ``connection()``
    borrows a pooled connection (from the user's pool or engine when one was given).
    """

    def __init__(self, dsn: str, *, pool: ConnectionPool | None = None,
                 engine: Engine | None = None) -> None:
        self.dsn = dsn
        self._pool = pool
        self._engine = engine
        self._own_pool: ConnectionPool | None = None
        self._pool_pid = os.getpid()
        self._pool_size = _pool_size_setting()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Database({redact(self.dsn)!r})"

    @contextlib.contextmanager
    def connection(self, *, timeout: float | None = None, errors: ErrorMap | None = None
                   ) -> Iterator[psycopg.Connection[Any]]:
        """Borrow a connection; commit on success, roll back on error, errors translated.

        ``timeout``: most seconds to wait for a pooled connection (the pool's default, 30,
        when None); waiting out a database restart happens here. ``errors`` maps psycopg
        error classes (SQLSTATEs a stored function raises) to the caller's own errors,
        before the shared map of :func:`~.errors.translate_errors` applies.
        """
        with translate_errors(errors):
            if self._engine is not None:
                raw = self._engine.raw_connection()
                try:
                    conn = raw.driver_connection
                    if not isinstance(conn, psycopg.Connection):
                        raise ConfigurationError(
                            "SQLAlchemy engine must use the psycopg 3 driver: "
                            "create_engine('postgresql+psycopg://…')")
                    try:
                        yield conn
                        raw.commit()
                    except BaseException:
                        raw.rollback()
                        raise
                finally:
                    raw.close()
                return
            pool = self._pool or self._shared_pool()
            with pool.connection(timeout=timeout) as conn:
                yield conn

    @contextlib.contextmanager
    def single_statement(self, *, timeout: float | None = None, errors: ErrorMap | None = None
                         ) -> Iterator[psycopg.Connection[Any]]:
        """Borrow a connection for exactly one statement, run in autocommit mode.

        Postgres then makes the statement its own transaction: one network round trip
        instead of three (BEGIN, statement, COMMIT), the same atomicity. The connection
        goes back to the pool in the mode it came in.
        """
        with self.connection(timeout=timeout, errors=errors) as conn:
            switch = (not conn.autocommit
                      and conn.info.transaction_status == pq.TransactionStatus.IDLE)
            if switch:
                conn.autocommit = True
            try:
                yield conn
            finally:
                # A broken or interrupted connection (mid-statement) cannot switch back; the
                # pool discards it, and the original exception is the one that counts.
                if switch and not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.autocommit = False

    def fetch_one(self, query: Any, params: Mapping[str, Any] | None = None, *,
                  errors: ErrorMap | None = None) -> tuple[Any, ...] | None:
        """Run one statement (autocommit, one round trip) and return its first row.

        ``errors``: as for :meth:`connection`.
        """
        with self.single_statement(errors=errors) as conn:
            return conn.execute(query, params).fetchone()

    def fetch_value(self, query: Any, params: Mapping[str, Any] | None = None, *,
                    errors: ErrorMap | None = None) -> Any:
        """The first column of :meth:`fetch_one`'s row (``None`` without a row)."""
        row = self.fetch_one(query, params, errors=errors)
        return row[0] if row else None

    def connect(self, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
        """Open a dedicated connection (for LISTEN, advisory locks); the caller closes it."""
        with translate_errors():
            return psycopg.connect(self.dsn, autocommit=autocommit, **kwargs)

    def reserve(self, connections: int) -> None:
        """Let this process's shared pool grow to at least ``connections``."""
        with self._lock:
            if connections <= self._pool_size:
                return
            self._pool_size = connections
            if self._own_pool is not None and self._pool_pid == os.getpid():
                self._own_pool.resize(self._own_pool.min_size, connections)

    def _shared_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool_pid != os.getpid():
                # A forked child (a prefork worker) must not use its parent's pool: the
                # sockets are shared and the pool's threads did not survive the fork. Nor
                # may it close it (libpq would end the parent's sessions), so it is kept
                # referenced and left alone.
                if self._own_pool is not None:
                    _inherited_pools.append(self._own_pool)
                self._own_pool = None
                self._pool_pid = os.getpid()
            if self._own_pool is None:
                from psycopg_pool import ConnectionPool

                # A DSN's own application_name wins; else pg_stat_activity shows ours.
                named = "application_name" in conninfo_to_dict(self.dsn)
                self._own_pool = ConnectionPool(
                    self.dsn, min_size=1, max_size=self._pool_size, open=True, name="swf",
                    check=_check_idle_connection,
                    kwargs={} if named else {"application_name": "swf-celery"})
            return self._own_pool

    def close(self) -> None:
        """Close the pool this handle opened itself (a user's pool or engine is left open)."""
        with self._lock:
            if self._own_pool is not None and self._pool_pid == os.getpid():
                self._own_pool.close()
            self._own_pool = None


def _pool_size_setting() -> int:
    raw = os.environ.get("SWF_POOL_SIZE")
    if raw is None:
        return DEFAULT_POOL_SIZE
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ConfigurationError(f"SWF_POOL_SIZE={raw!r} is not a number of connections >= 1")
    return size


def _check_idle_connection(conn: psycopg.Connection[Any]) -> None:
    """Pool checkout check: replace a connection the server has closed, so a database
    restart costs no caller an error.

    An idle pooled connection's socket is readable only when the server sent something,
    which on a restart is its termination notice: only then does the check pay psycopg's
    round trip. A healthy connection costs one non-blocking ``poll``.
    """
    if conn.closed:
        raise psycopg.OperationalError("connection is closed")
    poller = select.poll()  # poll, not select: descriptors above 1023 are fine
    poller.register(conn.fileno(), select.POLLIN)
    if poller.poll(0):
        from psycopg_pool import ConnectionPool

        ConnectionPool.check_connection(conn)


_databases: dict[str, Database] = {}
_inherited_pools: list[Any] = []  # parents' pools in a forked child: referenced, unused
_databases_lock = threading.Lock()


def resolve(repo: Repo | None = None) -> Database:
    """Turn a repo argument (DSN, Engine, ConnectionPool, Database or None) into a Database.

    ``None`` means :func:`database_url` without an app (``$SWF_DATABASE_URL``, else a
    running embedded server). DSNs share one pool per process.
    """
    if isinstance(repo, Database):
        return repo
    if repo is None:
        repo = database_url().url
    if isinstance(repo, str):
        dsn = normalize_dsn(repo)
        with _databases_lock:
            db = _databases.get(dsn)
            if db is None:
                db = _databases[dsn] = Database(dsn)
            return db
    # Duck-typed so that neither SQLAlchemy nor psycopg_pool must be imported eagerly.
    handle: Any = repo
    if hasattr(handle, "raw_connection") and hasattr(handle, "url"):
        url = handle.url
        if url.get_backend_name() != "postgresql" or url.get_driver_name() != "psycopg":
            raise ConfigurationError(
                f"SQLAlchemy engine uses {url.drivername!r}: swf-celery needs "
                "'postgresql+psycopg://' (psycopg 3)")
        dsn = normalize_dsn(url.set(drivername="postgresql").render_as_string(hide_password=False))
        return Database(dsn, engine=handle)
    if hasattr(handle, "connection") and hasattr(handle, "conninfo"):
        return Database(normalize_dsn(handle.conninfo), pool=handle)
    raise ConfigurationError(
        f"repo must be a DSN string, a SQLAlchemy Engine or a psycopg ConnectionPool, "
        f"not {type(repo).__name__}")
