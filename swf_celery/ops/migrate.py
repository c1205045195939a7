"""Schema migrations: pgmq first, then our numbered ``sql/NNNN_name.sql`` files.

:func:`migrate` is what ``swf-celery migrate`` runs. It

- takes a session advisory lock, so concurrent migrations serialise: the first applies,
  the others wait and then find nothing left to do (both succeed);
- installs pgmq: ``CREATE EXTENSION pgmq`` where the server offers it, otherwise the SQL
  that the PyPI package ``pgmq`` ships (never a copy of it in this repository);
- applies each pending file in its own transaction and records it in
  ``swf.schema_migrations``;
- refuses a database whose recorded version is newer than the newest file it knows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from swf_celery.db import DatabaseHandle, load_queries, resolve, translate_errors
from swf_celery.errors import (
    DatabasePermissionError,
    MigrationError,
    SchemaNotMigrated,
    SchemaTooNew,
)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
QUERIES = load_queries(__package__, "migrate.sql")


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file of ``sql/``."""

    version: int
    name: str
    sql: str


@dataclass(frozen=True)
class MigrationResult:
    """What :func:`migrate` did: versions applied, the final version, how pgmq got there."""

    applied: list[int]
    version: int
    pgmq: str  # "extension", "sql", "present"


def available() -> list[Migration]:
    """All migrations shipped with the package, in version order."""
    found: list[Migration] = []
    for entry in files("swf_celery.sql").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2),
                                   entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


def latest_version() -> int:
    """The newest schema version this code knows."""
    migrations = available()
    return migrations[-1].version if migrations else 0


def current_version(repo: DatabaseHandle | None = None) -> int:
    """The schema version recorded in the database (0 when never migrated)."""
    db = resolve(repo)
    with db.connection() as conn:
        if not conn.execute(QUERIES["schema_exists"]).fetchone()[0]:  # type: ignore[index]
            return 0
        return int(conn.execute(QUERIES["current_version"]).fetchone()[0])  # type: ignore[index]


def check(repo: DatabaseHandle | None = None) -> int:
    """Raise unless the database is migrated to exactly this code's version."""
    version = current_version(repo)
    latest = latest_version()
    if version > latest:
        raise SchemaTooNew(_too_new(version, latest))
    if version < latest:
        raise SchemaNotMigrated(
            f"database schema is at version {version}, this code needs {latest}: "
            "run `swf-celery migrate`"
        )
    return version


def _too_new(version: int, latest: int) -> str:
    return (f"database schema is at version {version}, newer than this code knows "
            f"({latest}): upgrade swf-celery instead of migrating down")


def migrate(repo: DatabaseHandle | None = None) -> MigrationResult:
    """Install pgmq and apply pending migrations; safe to run concurrently and repeatedly."""
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
    applied_versions = {row[0] for row in conn.execute(QUERIES["applied_versions"])}
    latest = latest_version()
    newest = max(applied_versions, default=0)
    if newest > latest:
        raise SchemaTooNew(_too_new(newest, latest))
    how = _install_pgmq(conn)
    applied: list[int] = []
    for migration in available():
        if migration.version in applied_versions:
            continue
        with conn.transaction():
            try:
                conn.execute(migration.sql.encode())
            except pg_errors.InsufficientPrivilege as exc:
                raise DatabasePermissionError(
                    f"migration {migration.version:04d}_{migration.name} needs a privilege the "
                    f"role lacks: {exc.diag.message_primary}; run `swf-celery migrate` as the "
                    "database owner"
                ) from exc
            except psycopg.Error as exc:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: "
                    f"{str(exc).strip()}"
                ) from exc
            conn.execute(QUERIES["record"], {"version": migration.version, "name": migration.name})
        applied.append(migration.version)
    return MigrationResult(applied, max(applied_versions | set(applied), default=0), how)


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
