"""The database plumbing every layer shares: one URL resolver, one pool, one statement helper.

- :func:`database_url` (:mod:`.urls`) decides which database a process uses;
  :func:`read_only_url` gives a URL whose sessions cannot write;
- :func:`resolve` (:mod:`.connections`) turns a database handle (:data:`DatabaseHandle`, the
  ``repo`` argument of every public function) into a :class:`Database` with ONE fork-safe
  pool per process; :meth:`Database.fetch_one` runs one statement in autocommit mode (one
  round trip) and maps the SQLSTATEs a caller names to its errors;
- :func:`translate_errors` (:mod:`.errors`) maps the rest of psycopg's errors to the
  :class:`~swf_celery.errors.SwfError` tree, once; :func:`retry_unavailable` rides out a
  restart;
- :func:`.transaction.transaction` makes the library's writes part of a caller's
  transaction (``with swf.transaction(conn):``);
- :func:`load_queries` (:mod:`.queries`) reads the named SQL blocks of a ``.sql`` file;
- :class:`~.listening.ListenConnection` (:mod:`.listening`) is the one LISTEN plumbing
  every listener of the library uses, and :func:`notification_health`
  (:mod:`.notifications`) reports PostgreSQL's notification queue and who holds it.
"""

from swf_celery.db.connections import (
    DEFAULT_POOL_SIZE,
    ROLES,
    Database,
    DatabaseHandle,
    application_name,
    behind_pooler,
    named_dsn,
    open_connection,
    resolve,
)
from swf_celery.db.errors import ErrorMap, retry_unavailable, translate_errors
from swf_celery.db.notifications import NotificationHealth, notification_health
from swf_celery.db.queries import load_queries
from swf_celery.db.urls import (
    APP_SETTING,
    ENV_DATABASE_URL,
    LIBPQ_PARAMETERS,
    LISTEN_PARAMETER,
    DatabaseUrl,
    broker_url,
    database_url,
    kombu_dsn,
    kombu_url,
    normalize_dsn,
    read_only_url,
    redact,
    split_listen_url,
    with_listen_url,
)

__all__ = [
    "APP_SETTING", "DEFAULT_POOL_SIZE", "ENV_DATABASE_URL", "ROLES", "Database", "DatabaseHandle",
    "DatabaseUrl", "ErrorMap", "LIBPQ_PARAMETERS", "LISTEN_PARAMETER", "NotificationHealth",
    "application_name", "behind_pooler", "broker_url", "database_url", "kombu_dsn",
    "kombu_url", "load_queries", "named_dsn", "normalize_dsn", "notification_health",
    "open_connection", "read_only_url", "split_listen_url", "with_listen_url", "redact", "resolve",
    "retry_unavailable", "translate_errors",
]
