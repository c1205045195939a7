"""The database plumbing every layer shares: one URL resolver, one pool, one statement helper.

- :func:`database_url` (:mod:`.urls`) decides which database a process uses;
- :func:`resolve` (:mod:`.connections`) turns a "repo" argument into a :class:`Database`
  with ONE fork-safe pool per process; :meth:`Database.fetch_one` runs one statement in
  autocommit mode (one round trip) and maps the SQLSTATEs a caller names to its errors;
- :func:`translate_errors` (:mod:`.errors`) maps the rest of psycopg's errors to the
  :class:`~swf_celery.errors.SwfError` tree, once; :func:`retry_unavailable` rides out a
  restart;
- :func:`load_queries` (:mod:`.queries`) reads the named SQL blocks of a ``.sql`` file.
"""

from swf_celery.db.connections import (
    DEFAULT_POOL_SIZE,
    ROLES,
    Database,
    Repo,
    application_name,
    named_dsn,
    resolve,
)
from swf_celery.db.errors import ErrorMap, retry_unavailable, translate_errors
from swf_celery.db.queries import load_queries
from swf_celery.db.urls import (
    APP_SETTING,
    ENV_DATABASE_URL,
    LIBPQ_PARAMETERS,
    DatabaseUrl,
    broker_url,
    database_url,
    kombu_dsn,
    normalize_dsn,
    redact,
)

__all__ = [
    "APP_SETTING", "DEFAULT_POOL_SIZE", "ENV_DATABASE_URL", "ROLES", "Database", "DatabaseUrl",
    "ErrorMap", "LIBPQ_PARAMETERS", "Repo", "application_name", "broker_url",
    "database_url", "kombu_dsn", "load_queries", "named_dsn", "normalize_dsn",
    "redact", "resolve", "retry_unavailable", "translate_errors",
]
