"""Database URLs: ONE resolver deciding which database a process uses, and URL forms.

:func:`database_url` applies one order everywhere (CLI, workers, examples): an explicit
URL, the Celery app's ``swf_database_url`` setting, the app's ``swf://`` broker (then
result backend) URL, ``$SWF_DATABASE_URL``, then the embedded server.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from swf_celery.errors import ConfigurationError

#: Environment variable naming the database when nothing more specific does.
ENV_DATABASE_URL = "SWF_DATABASE_URL"
#: Celery setting naming the workflow database (when the broker is not ``swf://``).
APP_SETTING = "swf_database_url"
#: URL schemes accepted for a PostgreSQL DSN.
_SCHEMES = {"postgresql", "postgres", "swf", "postgresql+psycopg", "db+postgresql",
            "db+postgresql+psycopg"}


def normalize_dsn(url: str) -> str:
    """Return a libpq URL for ``url``, accepting our ``swf://`` and SQLAlchemy forms.

    Raises :class:`ConfigurationError` naming the problem when ``url`` is not a
    PostgreSQL URL. A libpq keyword string (``host=… dbname=…``) passes unchanged.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            "database URL is empty: set SWF_DATABASE_URL=postgresql://user@host:5432/dbname")
    url = url.strip()
    if "://" not in url:
        if "=" in url:
            return url
        raise ConfigurationError(
            f"database URL {url!r} is not a URL: expected postgresql://user@host:5432/dbname")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ConfigurationError(
            f"database URL {redact(url)!r} is malformed ({exc}): "
            "expected postgresql://user@host:5432/dbname") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"database URL scheme {parts.scheme!r} is not PostgreSQL: "
            "use postgresql://, swf:// or postgresql+psycopg://")
    return urlunsplit(("postgresql", *parts[1:]))


def broker_url(dsn: str) -> str:
    """The ``swf://`` URL (broker and result backend) of a database URL or DSN."""
    dsn = normalize_dsn(dsn)
    if "://" not in dsn:  # keyword form: rebuild a URL from its parts
        params = conninfo_to_dict(dsn)
        user = quote(str(params.get("user", "")), safe="")
        password = params.get("password")
        auth = f"{user}@" if user else ""
        if password:
            auth = f"{user}:{quote(str(password), safe='')}@"
        port = f":{params['port']}" if params.get("port") else ""
        return f"swf://{auth}{params.get('host', 'localhost')}{port}/{params.get('dbname', '')}"
    return urlunsplit(("swf", *urlsplit(dsn)[1:]))


#: libpq parameters documented to pass through ``swf://…?`` to every connection (any
#: other libpq parameter passes too; these are the ones the README promises).
LIBPQ_PARAMETERS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "target_session_attrs",
                    "application_name", "connect_timeout")


def kombu_dsn(client: Any, application_name: str) -> str:
    """The libpq DSN of a kombu ``Connection`` to the ``swf://`` broker.

    The transport declares ``can_parse_url``, so kombu hands over the URL whole and its
    query parameters (``?sslmode=require&sslrootcert=…``) reach libpq; a connection built
    from keyword arguments (``Connection(hostname=…, userid=…)``) is assembled here. The
    URL's own ``application_name`` wins over ``application_name``.
    """
    hostname = client.hostname or "localhost"
    if "://" in hostname:
        dsn = normalize_dsn(hostname)
    else:
        vhost = (client.virtual_host or "").lstrip("/")
        params = {"host": hostname, "port": client.port or 5432, "user": client.userid,
                  "password": client.password, "dbname": vhost or None}
        dsn = make_conninfo(**{k: v for k, v in params.items() if v})
    if "application_name" in conninfo_to_dict(dsn):
        return dsn
    return make_conninfo(dsn, application_name=application_name)


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (for messages and logs).

    Covers the URL's user info, a ``password=`` query parameter and the libpq keyword
    form (``password=…``).
    """
    if not isinstance(url, str):
        return "<not a URL>"
    if "://" not in url:
        return _KEYWORD_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


_KEYWORD_PASSWORD = re.compile(r"""(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)""")
_QUERY_PASSWORD = re.compile(r"(\bpassword=)[^&]*")


@dataclass(frozen=True)
class DatabaseUrl:
    """A database URL and where it came from (``"--database"``, ``"$SWF_DATABASE_URL"``…)."""

    url: str
    source: str

    @property
    def masked(self) -> str:
        """The URL with its password shown as ``***``."""
        return redact(self.url)

    def describe(self) -> str:
        """``"<masked URL> (from <source>)"``: what commands print on stderr."""
        return f"{self.masked} (from {self.source})"


def database_url(explicit: str | None = None, *, app: Any = None,
                 start_embedded: bool = False) -> DatabaseUrl:
    """The database a process should use, and where that choice came from.

    In order: ``explicit``; ``app.conf.swf_database_url``; the app's broker URL when it is
    ``swf://`` or ``postgresql://``, then its ``swf://`` result
    backend; ``$SWF_DATABASE_URL``; the embedded server
    (started first when ``start_embedded``, else only if it runs). Raises
    :class:`ConfigurationError` when none applies.
    """
    if explicit:
        return DatabaseUrl(explicit, "argument")
    if app is not None:
        setting = app.conf.get(APP_SETTING)
        if setting:
            return DatabaseUrl(setting, f"app.conf.{APP_SETTING}")
        for name, schemes in (("broker_url", ("swf", "postgresql", "postgres")),
                              ("result_backend", ("swf",))):
            # The properties, not conf.get(): they honour CELERY_BROKER_URL and friends.
            value = getattr(app.conf, name, None)
            if isinstance(value, str) and value.split("://", 1)[0] in schemes:
                return DatabaseUrl(value, f"app.conf.{name}")
    env = os.environ.get(ENV_DATABASE_URL)
    if env:
        return DatabaseUrl(env, f"${ENV_DATABASE_URL}")
    # The embedded server imports only errors; it is the last resort of this resolver.
    from swf_celery.ops import embedded

    if start_embedded:
        return DatabaseUrl(embedded.start(quiet=True), "embedded server")
    if embedded.status().running:
        return DatabaseUrl(embedded.url(), "embedded server")
    where = f" or app.conf.{APP_SETTING}" if app is not None else ""
    raise ConfigurationError(
        f"no database given: pass a DSN, set SWF_DATABASE_URL{where}, or start the "
        "embedded server with `swf-celery db start`")
