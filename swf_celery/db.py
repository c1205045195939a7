"""Database handles: the one place a "repo" argument becomes a psycopg connection.

Every public function takes ``repo``: a DSN string (``postgresql://…`` or ``swf://…``),
a SQLAlchemy :class:`~sqlalchemy.engine.Engine` using ``postgresql+psycopg``, a psycopg
:class:`~psycopg_pool.ConnectionPool`, or a :class:`Database` made from any of them.
:func:`resolve` turns it into a :class:`Database`; :func:`translate_errors` turns
psycopg's exceptions into our :class:`~swf_celery.errors.SwfError` tree, once.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any, Union
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq

from swf_celery.errors import (
    ConfigurationError,
    DatabaseError,
    DatabasePermissionError,
    DatabaseUnavailable,
    SwfError,
    TransactionConflict,
)

ENV_DATABASE_URL = "SWF_DATABASE_URL"

#: URL schemes accepted for a PostgreSQL DSN.
_SCHEMES = {"postgresql", "postgres", "swf", "postgresql+psycopg", "db+postgresql",
            "db+postgresql+psycopg"}

Repo = Union[str, "Database", Any]  # Any: sqlalchemy Engine or psycopg_pool ConnectionPool


def normalize_dsn(url: str) -> str:
    """Return a libpq URL for ``url``, accepting our ``swf://`` and SQLAlchemy forms.

    Raises :class:`ConfigurationError` naming the problem when ``url`` is not a
    PostgreSQL URL.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            "database URL is empty: set SWF_DATABASE_URL=postgresql://user@host:5432/dbname"
        )
    url = url.strip()
    if "://" not in url:
        # A libpq keyword string ("host=… dbname=…") is passed through unchanged.
        if "=" in url:
            return url
        raise ConfigurationError(
            f"database URL {url!r} is not a URL: expected postgresql://user@host:5432/dbname"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ConfigurationError(
            f"database URL {_redact(url)!r} is malformed ({exc}): "
            "expected postgresql://user@host:5432/dbname"
        ) from None
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"database URL scheme {parts.scheme!r} is not PostgreSQL: "
            "use postgresql://, swf:// or postgresql+psycopg://"
        )
    return urlunsplit(("postgresql",) + tuple(parts[1:]))  # type: ignore[arg-type]


def _redact(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (for messages and logs)."""
    return _redact(url)


class Database:
    """A resolved database handle: hands out psycopg connections and knows its DSN.

    ``dsn`` is what LISTEN connections and worker subprocesses use; ``connection()``
    borrows a pooled connection (from the user's pool or engine when one was given).
    """

    def __init__(self, dsn: str, *, pool: Any = None, engine: Any = None) -> None:
        self.dsn = dsn
        self._pool = pool
        self._engine = engine
        self._own_pool: Any = None
        self._pool_pid = os.getpid()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Database({redact(self.dsn)!r})"

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Borrow a connection; commit on success, roll back on error, errors translated."""
        with translate_errors():
            if self._engine is not None:
                raw = self._engine.raw_connection()
                try:
                    conn = raw.driver_connection
                    if not isinstance(conn, psycopg.Connection):
                        raise ConfigurationError(
                            "SQLAlchemy engine must use the psycopg 3 driver: "
                            "create_engine('postgresql+psycopg://…')"
                        )
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
            with pool.connection() as conn:
                yield conn

    @contextlib.contextmanager
    def single_statement(self) -> Iterator[psycopg.Connection[Any]]:
        """Borrow a connection for exactly one statement, run in autocommit mode.

        Postgres then makes the statement its own transaction: one network round trip
        instead of three (BEGIN, statement, COMMIT), the same atomicity. The connection
        goes back to the pool in the mode it came in.
        """
        with self.connection() as conn:
            switch = (not conn.autocommit
                      and conn.info.transaction_status == pq.TransactionStatus.IDLE)
            if switch:
                conn.autocommit = True
            try:
                yield conn
            finally:
                if switch and not conn.closed:  # a broken one is discarded by the pool
                    conn.autocommit = False

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """Open a dedicated connection (for LISTEN, advisory locks); the caller closes it."""
        with translate_errors():
            return psycopg.connect(self.dsn, autocommit=autocommit)

    def _shared_pool(self) -> Any:
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

                # check_connection costs one empty round trip per checkout and means a
                # database restart costs nobody an error: dead connections are replaced.
                self._own_pool = ConnectionPool(
                    self.dsn, min_size=1, max_size=int(os.environ.get("SWF_POOL_SIZE", "8")),
                    open=True, name="swf", check=ConnectionPool.check_connection,
                )
            return self._own_pool

    def close(self) -> None:
        """Close the pool this handle opened itself (a user's pool or engine is left open)."""
        with self._lock:
            if self._own_pool is not None and self._pool_pid == os.getpid():
                self._own_pool.close()
            self._own_pool = None


_databases: dict[str, Database] = {}
_inherited_pools: list[Any] = []  # parents' pools in a forked child: referenced, unused
_databases_lock = threading.Lock()


def resolve(repo: Repo | None = None) -> Database:
    """Turn a repo argument (DSN, Engine, ConnectionPool, Database or None) into a Database.

    ``None`` means ``$SWF_DATABASE_URL``. DSNs share one pool per process.
    """
    if isinstance(repo, Database):
        return repo
    if repo is None:
        url = os.environ.get(ENV_DATABASE_URL)
        if not url:
            raise ConfigurationError(
                "no database given and SWF_DATABASE_URL is not set: pass a DSN, "
                "or run `swf-celery db url` for the embedded server's"
            )
        repo = url
    if isinstance(repo, str):
        dsn = normalize_dsn(repo)
        with _databases_lock:
            db = _databases.get(dsn)
            if db is None:
                db = _databases[dsn] = Database(dsn)
            return db
    # Duck-typed so that neither SQLAlchemy nor psycopg_pool must be imported eagerly.
    if hasattr(repo, "raw_connection") and hasattr(repo, "url"):
        url = repo.url
        if url.get_backend_name() != "postgresql" or url.get_driver_name() != "psycopg":
            raise ConfigurationError(
                f"SQLAlchemy engine uses {url.drivername!r}: swf-celery needs "
                "'postgresql+psycopg://' (psycopg 3)"
            )
        dsn = normalize_dsn(url.set(drivername="postgresql").render_as_string(hide_password=False))
        return Database(dsn, engine=repo)
    if hasattr(repo, "connection") and hasattr(repo, "conninfo"):
        return Database(normalize_dsn(repo.conninfo), pool=repo)
    raise ConfigurationError(
        f"repo must be a DSN string, a SQLAlchemy Engine or a psycopg ConnectionPool, "
        f"not {type(repo).__name__}"
    )


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise psycopg errors as :class:`SwfError` subclasses with an actionable message."""
    try:
        yield
    except SwfError:
        raise
    except pg_errors.InsufficientPrivilege as exc:
        raise DatabasePermissionError(
            f"permission denied: {exc.diag.message_primary or exc}; grant the role the "
            "privilege or run the command as the database owner"
        ) from exc
    except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure,
            pg_errors.LockNotAvailable) as exc:
        # OperationalError subclasses, but the server is fine: a conflict to retry.
        raise TransactionConflict(
            f"transaction conflict: {exc.diag.message_primary or exc}; retry the operation"
        ) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot reach PostgreSQL: {first}; check that the server runs and "
            "SWF_DATABASE_URL points at it"
        ) from exc
    except psycopg.Error as exc:
        raise DatabaseError(f"PostgreSQL error: {str(exc).strip()}") from exc
