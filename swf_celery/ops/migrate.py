"""Schema migrations: pgmq, then the numbered migrations, then every function file.

:func:`migrate` is what ``swf-celery migrate`` runs. It

- takes a session advisory lock, so concurrent migrations serialise: the first applies,
  the others wait and then find nothing left to do (both succeed);
- refuses a database whose recorded version is newer than the newest file it knows, and one
  where a migration recorded as applied differs from its file (its checksum), naming it;
- installs pgmq: ``CREATE EXTENSION pgmq`` where the server offers it, otherwise the SQL
  that the PyPI package ``pgmq`` ships (never a copy of it in this repository);
- applies each pending ``sql/migrations/NNNN_name.sql`` in its own transaction and records
  it, with its checksum, in ``swf.schema_migrations``;
- then applies every ``sql/functions/*.sql`` in ONE transaction, drops the functions of
  schema ``swf`` that no file defines any more, and records each file's checksum in
  ``swf.schema_functions``: a database's functions are always exactly the code's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from swf_celery.db import DatabaseHandle, load_queries, resolve, schema, translate_errors
from swf_celery.db.schema import FunctionFile, Migration
from swf_celery.errors import (
    DatabasePermissionError,
    MigrationDrift,
    MigrationError,
    SchemaTooNew,
)

QUERIES = load_queries(__package__, "migrate.sql")
#: How many functions whose result type or parameter names changed one migrate may drop.
_MAX_REDEFINED = 20
_DROP_HINT = re.compile(r"Use DROP FUNCTION (.+) first\.")

__all__ = ["Migration", "MigrationResult", "available", "check", "current_version",
           "latest_version", "migrate"]


@dataclass(frozen=True)
class MigrationResult:
    """What :func:`migrate` did: versions applied, the final version, how pgmq got there."""

    applied: list[int]
    version: int
    pgmq: str  # "extension", "sql", "present"
    dropped: tuple[str, ...] = ()  # functions no file defines any more


def available() -> list[Migration]:
    """All migrations shipped with the package, in version order."""
    return list(schema.migrations())


def latest_version() -> int:
    """The newest schema version this code knows."""
    return schema.latest_version()


def current_version(repo: DatabaseHandle | None = None) -> int:
    """The schema version recorded in the database (0 when never migrated)."""
    db = resolve(repo)
    with db.connection() as conn:
        if not conn.execute(schema.QUERIES["schema_exists"]).fetchone()[0]:  # type: ignore[index]
            return 0
        return int(conn.execute(schema.QUERIES["current_version"]).fetchone()[0])  # type: ignore[index]


def check(repo: DatabaseHandle | None = None) -> int:
    """Raise unless the database holds exactly this code's migrations and functions."""
    db = resolve(repo)
    with translate_errors(), db.connection() as conn:
        return schema.require_current(conn)


def migrate(repo: DatabaseHandle | None = None) -> MigrationResult:
    """Install pgmq, apply pending migrations and every function file; safe to repeat."""
    db = resolve(repo)
    conn = db.connect(autocommit=True)
    try:
        with translate_errors():
            conn.execute(QUERIES["lock"])
            try:
                return _migrate_locked(conn)
            finally:
                conn.execute(QUERIES["unlock"])
    finally:
        conn.close()


def _migrate_locked(conn: psycopg.Connection[Any]) -> MigrationResult:
    with conn.transaction():
        _with_privilege_hint(lambda: conn.execute(QUERIES["bootstrap"]), "create the swf schema")
    recorded = {version: (name, checksum) for version, name, checksum
                in conn.execute(QUERIES["applied"])}
    latest = latest_version()
    newest = max(recorded, default=0)
    if newest > latest:
        raise SchemaTooNew(schema.too_new(newest, latest))
    _refuse_drift(conn, recorded)
    how = _install_pgmq(conn)
    applied: list[int] = []
    for migration in available():
        if migration.version in recorded:
            continue
        with conn.transaction():
            _run(conn, migration.sql, f"migration {migration.version:04d}_{migration.name}")
            conn.execute(QUERIES["record"], {"version": migration.version,
                                             "name": migration.name,
                                             "checksum": migration.checksum})
        applied.append(migration.version)
    dropped = _apply_functions(conn, schema.function_files())
    return MigrationResult(applied, max(set(recorded) | set(applied), default=0), how, dropped)


def _refuse_drift(conn: psycopg.Connection[Any],
                  recorded: dict[int, tuple[str, str | None]]) -> None:
    """Raise MigrationDrift for an applied migration whose file changed since.

    Rows recorded before checksums were kept (NULL) adopt the file's checksum.
    """
    files = {m.version: m for m in available()}
    for version, (name, checksum) in sorted(recorded.items()):
        migration = files.get(version)
        if migration is None:
            continue  # only possible with a newer database, refused above
        if checksum is None:
            with conn.transaction():
                conn.execute(QUERIES["adopt_checksum"],
                             {"version": version, "checksum": migration.checksum})
        elif checksum != migration.checksum or name != migration.name:
            raise MigrationDrift(
                f"migration {version:04d}_{name} was applied from a different file than "
                f"sql/migrations/{version:04d}_{migration.name}.sql (checksum "
                f"{checksum[:12]} recorded, {migration.checksum[:12]} now): a released "
                "migration is never edited; restore the file and put the change in a new "
                "migration")


def _apply_functions(conn: psycopg.Connection[Any],
                     function_files: tuple[FunctionFile, ...]) -> tuple[str, ...]:
    """Apply every function file in one transaction; drop the functions no file defines.

    ``CREATE OR REPLACE`` keeps a function's privileges. It cannot change a result type or
    a parameter name: such a function is dropped first (PostgreSQL's error names it), its
    EXECUTE grants given again, and the transaction run anew.
    """
    redefined: dict[str, list[str]] = {}
    for _ in range(_MAX_REDEFINED + 1):
        try:
            with conn.transaction():
                conn.execute(QUERIES["functions_setup"])
                for function in redefined:
                    conn.execute(f"DROP FUNCTION {function}".encode())
                for file in function_files:
                    _run(conn, file.sql, f"sql/functions/{file.name}.sql", redefinable=True)
                for function, grantees in redefined.items():
                    for grantee in grantees:
                        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
                            sql.SQL(function), sql.Identifier(grantee)))
                stale = [row[0] for row in conn.execute(QUERIES["stale_functions"])]
                for function in stale:
                    _run(conn, f"DROP FUNCTION {function}", f"dropping {function}")
                for file in function_files:
                    conn.execute(QUERIES["record_functions"], {
                        "name": file.name, "checksum": file.checksum,
                        "code_version": schema.code_version()})
                conn.execute(QUERIES["forget_functions"],
                             {"names": [f.name for f in function_files]})
            return tuple(stale)
        except _Redefined as exc:
            function = conn.execute(QUERIES["function_name"],  # canonical, and known to exist
                                    {"function": exc.function}).fetchone()[0]  # type: ignore[index]
            redefined[function] = [row[0] for row in conn.execute(
                QUERIES["function_grantees"], {"function": function})]
    raise MigrationError(f"more than {_MAX_REDEFINED} functions changed their result type")


class _Redefined(Exception):
    """A function file changes the result type or parameter names of ``function``."""

    def __init__(self, function: str) -> None:
        super().__init__(function)
        self.function = function


def _run(conn: psycopg.Connection[Any], text: str, what: str, *,
         redefinable: bool = False) -> None:
    try:
        conn.execute(text.encode())
    except pg_errors.InsufficientPrivilege as exc:
        raise DatabasePermissionError(
            f"{what} needs a privilege the role lacks: {exc.diag.message_primary}; run "
            "`swf-celery migrate` as the database owner") from exc
    except pg_errors.InvalidFunctionDefinition as exc:
        match = _DROP_HINT.search(exc.diag.message_hint or "")
        if match is None or not redefinable:
            raise MigrationError(f"{what} failed: {str(exc).strip()}") from exc
        raise _Redefined(match.group(1)) from exc
    except psycopg.Error as exc:
        raise MigrationError(f"{what} failed: {str(exc).strip()}") from exc


def _install_pgmq(conn: psycopg.Connection[Any]) -> str:
    if conn.execute(QUERIES["pgmq_extension_installed"]).fetchone()[0]:  # type: ignore[index]
        return "present"
    if conn.execute(QUERIES["pgmq_sql_installed"]).fetchone()[0]:  # type: ignore[index]
        return "present"
    if conn.execute(QUERIES["pgmq_extension_available"]).fetchone()[0]:  # type: ignore[index]
        try:
            with conn.transaction():
                conn.execute(QUERIES["create_pgmq_extension"])
            return "extension"
        except pg_errors.InsufficientPrivilege:
            pass  # fall back to the SQL install, which needs only CREATE on the database
    from pgmq.install import get_embedded_install_sql

    sql = get_embedded_install_sql()
    with conn.transaction():
        _with_privilege_hint(lambda: conn.execute(sql.encode()), "install pgmq's SQL")
    return "sql"


def _with_privilege_hint(action: Any, what: str) -> None:
    try:
        action()
    except pg_errors.InsufficientPrivilege as exc:
        raise DatabasePermissionError(
            f"cannot {what}: {exc.diag.message_primary}; grant the role CREATE on the "
            "database (GRANT CREATE ON DATABASE … TO …) or run `swf-celery migrate` as its owner"
        ) from exc
