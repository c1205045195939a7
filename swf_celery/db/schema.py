"""The schema this code needs: numbered migrations (tables) and function files (code).

``sql/migrations/NNNN_name.sql`` hold tables, indexes, types and data moves; once released a
file never changes, and the database records the checksum of each one it applied.
``sql/functions/<concern>.sql`` hold every stored function, trigger and view, each defined
once; ``swf-celery migrate`` applies all of them on every run and records each file's
checksum in ``swf.schema_functions``.

:func:`require_current` is what a worker (the ``swf://`` transport), the result backend and
the CLI run before they use a database: it refuses one whose migrations or functions are
older than this code, naming the command to run.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from importlib.resources import files
from typing import Any

import psycopg

from swf_celery.db.queries import load_queries
from swf_celery.errors import MigrationError, SchemaNotMigrated, SchemaTooNew

logger = logging.getLogger(__name__)
QUERIES = load_queries(__package__, "schema.sql")
_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_FUNCTIONS = re.compile(r"^([a-z0-9_]+)\.sql$")
#: What to run when the database is behind the code.
MIGRATE_HINT = "run `swf-celery migrate`"


@dataclass(frozen=True)
class SqlFile:
    """One file of ``sql/``, with the checksum the database records of it."""

    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Migration(SqlFile):
    """One numbered file of ``sql/migrations/`` (recorded in ``swf.schema_migrations``)."""

    version: int


class FunctionFile(SqlFile):
    """One file of ``sql/functions/``: the stored functions of one concern (recorded in
    ``swf.schema_functions``)."""


def _read(folder: str, pattern: re.Pattern[str]) -> list[tuple[re.Match[str], str]]:
    """The files of ``sql/<folder>`` whose names match ``pattern``, with their text."""
    return [(match, entry.read_text(encoding="utf-8"))
            for entry in files("swf_celery.sql").joinpath(folder).iterdir()
            if (match := pattern.match(entry.name))]


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with the package, in version order."""
    found = sorted((Migration(match.group(2), text, int(match.group(1)))
                    for match, text in _read("migrations", _MIGRATION)),
                   key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return tuple(found)


@functools.cache
def function_files() -> tuple[FunctionFile, ...]:
    """Every function file shipped with the package, in name order."""
    return tuple(sorted((FunctionFile(match.group(1), text)
                         for match, text in _read("functions", _FUNCTIONS)),
                        key=lambda f: f.name))


def latest_version() -> int:
    """The newest schema version this code knows."""
    known = migrations()
    return known[-1].version if known else 0


def code_version() -> str:
    """The installed swf-celery version, recorded with the functions it applies."""
    try:
        return package_version("swf-celery")
    except PackageNotFoundError:
        return "0"


def too_new(version: int, latest: int) -> str:
    """The error text for a database migrated by newer code."""
    return (f"database schema is at version {version}, newer than this code knows "
            f"({latest}): upgrade swf-celery instead of migrating down")


def _release(text: str) -> tuple[int, ...]:
    """A version string's leading numbers ("0.10.2rc1" -> (0, 10, 2)), for ordering."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def require_current(conn: psycopg.Connection[Any]) -> int:
    """Raise unless the database holds this code's migrations and functions; return its version.

    Functions recorded by a newer release (a rolling upgrade: ``migrate`` ran with new code,
    this process is still the old one) are accepted with a warning; functions older than this
    code, or different at the same version, are refused.
    """
    if not conn.execute(QUERIES["schema_exists"]).fetchone()[0]:  # type: ignore[index]
        raise SchemaNotMigrated(f"the swf schema is not migrated: {MIGRATE_HINT}")
    version = int(conn.execute(QUERIES["current_version"]).fetchone()[0])  # type: ignore[index]
    latest = latest_version()
    if version > latest:
        raise SchemaTooNew(too_new(version, latest))
    if version < latest:
        raise SchemaNotMigrated(
            f"database schema is at version {version}, this code needs {latest}: "
            f"{MIGRATE_HINT}")
    recorded: dict[str, tuple[str, str]] = {}
    if conn.execute(QUERIES["functions_recorded"]).fetchone()[0]:  # type: ignore[index]
        recorded = {name: (checksum, by) for name, checksum, by
                    in conn.execute(QUERIES["function_checksums"])}
    stale = [f.name for f in function_files() if recorded.get(f.name, ("", ""))[0] != f.checksum]
    if not stale:
        return version
    newer = [recorded[name][1] for name in stale
             if name in recorded and _release(recorded[name][1]) > _release(code_version())]
    if len(newer) == len(stale):
        logger.warning("swf: the database's functions (%s) come from swf-celery %s, newer than "
                       "this code (%s): finish the rolling upgrade", ", ".join(stale),
                       max(newer, key=_release), code_version())
        return version
    raise SchemaNotMigrated(
        f"the database's stored functions are older than this code (sql/functions/"
        f"{stale[0]}.sql{' and others' if len(stale) > 1 else ''} differ): {MIGRATE_HINT}")
