"""Connections: a database handle (the ``repo`` argument) resolved to ONE fork-safe pool
per process, and the one-statement helper every layer uses.

:func:`resolve` turns a :data:`DatabaseHandle` (a DSN, a SQLAlchemy Engine using
``postgresql+psycopg``, a psycopg ConnectionPool, a :class:`Database`, or None for
:func:`~.urls.database_url`) into a :class:`Database`. DSNs share one pool per process; a
forked child (a prefork worker) opens its own and never touches its parent's.

Connections of the pool and of :func:`open_connection` log the database's notices of
skipped NOTIFYs as warnings (:mod:`.notifications`).

Every connection names its role in ``application_name`` (``swf-broker@host``,
``swf-results@host``, ``swf-listen@host``, ``swf-steps@host``, ``swf-client@host``) unless
the URL sets one, so ``pg_stat_activity`` shows who is who. A role is a label, not a pool:
the roles of one process share its one pool, and a borrowed connection is relabelled
(one round trip) only when its last user had another role. Pools open no connection until
one is needed and close connections idle longer than ``$SWF_POOL_MAX_IDLE`` seconds, so a
prefork child that stores a result or reports a step holds one connection, and only then.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Union

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from swf_celery.db.errors import ErrorMap, translate_errors
from swf_celery.db.notifications import log_skips
from swf_celery.db.queries import load_queries
from swf_celery.db.transaction import current as joined_transaction
from swf_celery.db.urls import database_url, normalize_dsn, redact, split_listen_url
from swf_celery.errors import ConfigurationError

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool
    from sqlalchemy.engine import Engine

#: Most connections of a process's shared pool, unless ``$SWF_POOL_SIZE`` says otherwise.
DEFAULT_POOL_SIZE = 8
#: Seconds a pooled connection may stay idle before it is closed (``$SWF_POOL_MAX_IDLE``).
DEFAULT_MAX_IDLE = 60.0
#: The roles a connection can name in its ``application_name`` (``swf-<role>@<host>``).
ROLES = ("broker", "results", "listen", "steps", "client")
#: Longest ``application_name`` PostgreSQL keeps (NAMEDATALEN - 1 bytes).
_NAME_LIMIT = 63
QUERIES = load_queries("swf_celery.db")

#: A database handle: what every public function accepts as its ``repo`` argument (a
#: resolved :class:`Database`, which internal code passes around as ``db``, is one too).
DatabaseHandle = Union[str, "Database", "Engine", "ConnectionPool"]


class Database:
    """A resolved database handle: hands out psycopg connections and knows its DSN.

    ``dsn`` is what LISTEN connections and worker subprocesses use; ``connection()``
    borrows a pooled connection (from the user's pool or engine when one was given).
    ``role`` (one of :data:`ROLES`) is what its connections show in ``application_name``;
    :meth:`as_role` gives a handle of another role sharing the same pool.
    """

    def __init__(self, dsn: str, *, pool: ConnectionPool | None = None,
                 engine: Engine | None = None, role: str = "client") -> None:
        self.dsn = dsn
        self.role = _check_role(role)
        self._pool = pool
        self._engine = engine
        self._state = _PoolState()
        # The URL's own application_name wins over the role's.
        self._libpq_dsn, self.listen_dsn = split_listen_url(dsn)
        self._named = "application_name" in _conninfo(self._libpq_dsn)

    def __repr__(self) -> str:
        return f"Database({redact(self.dsn)!r}, role={self.role!r})"

    def as_role(self, role: str) -> Database:
        """This database seen by ``role``: the same pool, connections labelled ``role``."""
        if _check_role(role) == self.role:
            return self
        with self._state.lock:
            other = self._state.roles.get(role)
            if other is None:
                other = Database.__new__(Database)
                other.__dict__.update(self.__dict__)
                other.role = role
                self._state.roles[role] = other
            return other

    @property
    def application_name(self) -> str:
        """What this handle's connections show in ``pg_stat_activity``."""
        return application_name(self.role)

    @contextlib.contextmanager
    def connection(self, *, timeout: float | None = None, errors: ErrorMap | None = None
                   ) -> Iterator[psycopg.Connection[Any]]:
        """Borrow a connection; commit on success, roll back on error, errors translated.

        Inside ``swf.transaction(conn)`` (:mod:`.transaction`) it is that connection, left
        in its transaction (the caller commits).

        ``timeout``: most seconds to wait for a pooled connection (the pool's default, 30,
        when None); waiting out a database restart happens here. ``errors`` maps psycopg
        error classes (SQLSTATEs a stored function raises) to the caller's own errors,
        before the shared map of :func:`~.errors.translate_errors` applies.
        """
        joined = joined_transaction()
        if joined is not None:
            # Inside ``swf.transaction(conn)``: the caller's transaction, committed by it.
            with translate_errors(errors):
                yield joined
            return
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
            if self._pool is not None:
                with self._pool.connection(timeout=timeout) as conn, _discard_read_only(conn):
                    yield conn
                return
            with self._shared_pool().connection(timeout=timeout) as conn, \
                    _discard_read_only(conn):
                if not self._named:
                    _label(conn, self.application_name)
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
            switch = (not conn.autocommit and conn is not joined_transaction()
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

    def connect(self, *, autocommit: bool = True, role: str | None = None,
                **kwargs: Any) -> psycopg.Connection[Any]:
        """Open a dedicated connection (for LISTEN, advisory locks); the caller closes it.

        It is labelled ``role`` (default: this handle's) unless the URL names itself; a
        ``listen`` connection goes to the URL's ``listen_url`` when it has one.
        """
        with translate_errors():
            return open_connection(self.dsn, role or self.role, autocommit=autocommit,
                                   **kwargs)

    def reserve(self, connections: int) -> None:
        """Let this process's shared pool grow to at least ``connections``."""
        state = self._state
        with state.lock:
            if connections <= state.size:
                return
            state.size = connections
            if state.pool is not None and state.pid == os.getpid():
                state.pool.resize(state.pool.min_size, connections)

    def _shared_pool(self) -> ConnectionPool:
        state = self._state
        with state.lock:
            if state.pid != os.getpid():
                # A forked child (a prefork worker) must not use its parent's pool: the
                # sockets are shared and the pool's threads did not survive the fork. Nor
                # may it close it (libpq would end the parent's sessions), so it is kept
                # referenced and left alone.
                if state.pool is not None:
                    _inherited_pools.append(state.pool)
                state.pool = None
                state.pid = os.getpid()
            if state.pool is None:
                from psycopg_pool import ConnectionPool

                # No connection until one is needed (min_size 0); idle ones close.
                kwargs: dict[str, Any] = {} if self._named else {
                    "application_name": self.application_name}
                if self.listen_dsn is not None:  # a transaction pooler: nothing prepared
                    kwargs["prepare_threshold"] = None
                state.pool = ConnectionPool(
                    self._libpq_dsn, min_size=0, max_size=state.size, open=True, name="swf",
                    max_idle=state.max_idle, check=_check_idle_connection,
                    configure=log_skips, kwargs=kwargs)
            return state.pool

    def close(self) -> None:
        """Close the pool this handle opened itself (a user's pool or engine is left open)."""
        state = self._state
        with state.lock:
            if state.pool is not None and state.pid == os.getpid():
                state.pool.close()
            state.pool = None


class _PoolState:
    """The one pool of a DSN in this process, shared by the :class:`Database` of each role."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: ConnectionPool | None = None
        self.pid = os.getpid()
        self.size = _pool_size_setting()
        self.max_idle = _max_idle_setting()
        self.roles: dict[str, Database] = {}
        _pool_states.add(self)


def application_name(role: str) -> str:
    """``swf-<role>@<host>``: the ``application_name`` of a connection serving ``role``."""
    return f"swf-{_check_role(role)}@{socket.gethostname()}"[:_NAME_LIMIT]


def named_dsn(dsn: str, role: str) -> str:
    """The libpq DSN a ``role`` connection of ``dsn`` uses: ``application_name`` set to the
    role's unless the DSN names itself; for ``listen``, the URL's ``listen_url`` when set
    (``listen_url`` never reaches libpq)."""
    main, listen = split_listen_url(dsn)
    base = listen if role == "listen" and listen is not None else main
    if "application_name" in _conninfo(base):
        return base
    return make_conninfo(base, application_name=application_name(role))


def behind_pooler(dsn: str) -> bool:
    """Whether ``dsn`` goes through a transaction pooler (it names a ``listen_url``): no
    session state and no server-side prepared statements on its connections."""
    return split_listen_url(dsn)[1] is not None


def open_connection(dsn: str, role: str, *, autocommit: bool = True,
                    **kwargs: Any) -> psycopg.Connection[Any]:
    """A dedicated connection of ``role`` to ``dsn`` (see :func:`named_dsn`); through a
    transaction pooler, psycopg prepares nothing. It logs the database's notices of skipped
    NOTIFYs (:func:`~.notifications.log_skips`). The caller closes it."""
    if role != "listen" and behind_pooler(dsn):
        kwargs.setdefault("prepare_threshold", None)
    conn = psycopg.connect(named_dsn(dsn, role), autocommit=autocommit, **kwargs)
    log_skips(conn)
    return conn


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigurationError(f"connection role {role!r} is not one of {', '.join(ROLES)}")
    return role


def _conninfo(dsn: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"database URL {redact(dsn)!r} is invalid: {exc}") from None


def _label(conn: psycopg.Connection[Any], name: str) -> None:
    """Make ``conn`` show ``name`` in pg_stat_activity (a round trip only when it changes).

    The server reports ``application_name`` on every change, so the connection knows its
    current one without asking. Set outside any transaction: a rollback cannot undo it.
    """
    if conn.info.parameter_status("application_name") == name:
        return
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        return
    switch = not conn.autocommit
    if switch:
        conn.autocommit = True
    try:
        conn.execute(QUERIES["set_application_name"], {"name": name})
    finally:
        if switch:
            conn.autocommit = False


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


def _max_idle_setting() -> float:
    raw = os.environ.get("SWF_POOL_MAX_IDLE")
    if raw is None:
        return DEFAULT_MAX_IDLE
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ConfigurationError(f"SWF_POOL_MAX_IDLE={raw!r} is not a number of seconds > 0")
    return seconds


@contextlib.contextmanager
def _discard_read_only(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Close ``conn`` when a statement finds its server read-only, so the pool replaces it.

    ``target_session_attrs=read-write`` is checked only when a session opens: a session on
    a server that became (or, behind a moved address, is) a standby would otherwise go
    back to the pool and fail every later write too. The error itself is raised as
    :class:`~swf_celery.errors.DatabaseUnavailable` (retried like a lost connection).
    """
    try:
        yield
    except pg_errors.ReadOnlySqlTransaction:
        conn.close()
        raise


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
_pool_states: weakref.WeakSet[_PoolState] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child (a prefork worker) gets fresh locks: another thread of the parent (the
    retention bootstep, a waiter) may have held one at the fork, and the child's copy would
    then stay locked forever. The child does not use its parent's pools (``_shared_pool``)."""
    global _databases_lock
    _databases_lock = threading.Lock()
    for state in list(_pool_states):
        state.lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def resolve(repo: DatabaseHandle | None = None, *, role: str | None = None) -> Database:
    """Turn a ``repo`` argument (DSN, Engine, ConnectionPool, Database or None) into a Database.

    ``None`` means :func:`database_url` without an app (``$SWF_DATABASE_URL``, else a
    running embedded server). DSNs share one pool per process. ``role`` (see
    :data:`ROLES`) labels the handle's connections; by default a given Database keeps its
    own and anything else is ``client``.
    """
    db = _resolve(repo)
    return db.as_role(role) if role else db


def _resolve(repo: DatabaseHandle | None) -> Database:
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
