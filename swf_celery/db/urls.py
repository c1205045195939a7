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
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from swf_celery.errors import ConfigurationError

#: Environment variable naming the database when nothing more specific does.
ENV_DATABASE_URL = "SWF_DATABASE_URL"
#: libpq ``options`` that make every transaction of a session read-only.
READ_ONLY_OPTIONS = "-c default_transaction_read_only=on"
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
        for host in parts.netloc.rpartition("@")[2].split(","):  # libpq: h1:p1,h2:p2
            urlsplit(f"//{host}").port  # noqa: B018 - raises ValueError on a malformed port
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


#: URL parameter naming where LISTEN connections go when the URL itself is a transaction
#: pooler (PgBouncer): ``swf://app@pgbouncer:6432/app?listen_url=postgresql%3A%2F%2F…``.
LISTEN_PARAMETER = "listen_url"


def split_listen_url(dsn: str) -> tuple[str, str | None]:
    """``(dsn without listen_url, the listen URL or None)``.

    A URL with ``listen_url`` goes through a transaction pooler: its LISTEN connections go
    to the listen URL instead (see README "Running many workers").
    """
    if "://" not in dsn or LISTEN_PARAMETER not in dsn:
        return dsn, None
    parts = urlsplit(dsn)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    listen = [v for k, v in pairs if k == LISTEN_PARAMETER]
    if not listen:
        return dsn, None
    if not listen[-1]:
        raise ConfigurationError(f"database URL {redact(dsn)!r}: {LISTEN_PARAMETER} is empty")
    # The other parameters stay as written: re-encoding them would turn a space (%20) into
    # "+", which libpq reads as a plus sign.
    rest = "&".join(p for p in parts.query.split("&")
                    if p and unquote(p.partition("=")[0]) != LISTEN_PARAMETER)
    return urlunsplit(parts._replace(query=rest)), normalize_dsn(listen[-1])


def with_listen_url(dsn: str, listen_url: str | None) -> str:
    """``dsn`` with ``listen_url`` added (unless it has one, or ``listen_url`` is empty)."""
    if not listen_url or split_listen_url(dsn)[1] is not None:
        return dsn
    if "://" not in dsn:
        raise ConfigurationError(
            f"{LISTEN_PARAMETER} needs the database as a URL (postgresql://…), not "
            f"{redact(dsn)!r}")
    normalize_dsn(listen_url)  # a clear error now rather than at the first LISTEN
    sep = "&" if urlsplit(dsn).query else "?"
    return f"{dsn}{sep}{urlencode({LISTEN_PARAMETER: listen_url})}"


def read_only_url(dsn: str) -> str:
    """``dsn`` whose sessions are read-only from their start: libpq ``options`` gains
    :data:`READ_ONLY_OPTIONS`, so any write of such a session, inside a stored function
    too, fails with SQLSTATE 25006. Its own ``options`` and ``listen_url`` are kept.
    """
    main, listen = split_listen_url(dsn)
    if "://" not in main:
        options = str(conninfo_to_dict(main).get("options") or "")
        return make_conninfo(main, options=f"{options} {READ_ONLY_OPTIONS}".strip())
    # The other parameters are left as written: re-encoding them could change what libpq
    # reads (it decodes %XX only, never "+").
    parts = urlsplit(main)
    pieces = [p for p in parts.query.split("&") if p]
    given = [unquote(p.partition("=")[2]) for p in pieces if p.partition("=")[0] == "options"]
    pieces = [p for p in pieces if p.partition("=")[0] != "options"]
    pieces.append("options=" + quote(" ".join([*given[-1:], READ_ONLY_OPTIONS]), safe=""))
    return with_listen_url(urlunsplit(parts._replace(query="&".join(pieces))), listen)


def kombu_url(client: Any) -> str:
    """The database URL of a kombu ``Connection`` to the ``swf://`` broker (its query
    parameters, ``listen_url`` included, kept)."""
    hostname = client.hostname or "localhost"
    if "://" in hostname:
        return normalize_dsn(hostname)
    vhost = (client.virtual_host or "").lstrip("/")
    params = {"host": hostname, "port": client.port or 5432, "user": client.userid,
              "password": client.password, "dbname": vhost or None}
    return make_conninfo(**{k: v for k, v in params.items() if v})


def kombu_dsn(client: Any, application_name: str) -> str:
    """The libpq DSN of a kombu ``Connection`` to the ``swf://`` broker.

    The transport declares ``can_parse_url``, so kombu hands over the URL whole and its
    query parameters (``?sslmode=require&sslrootcert=…``) reach libpq; a connection built
    from keyword arguments (``Connection(hostname=…, userid=…)``) is assembled here. The
    URL's own ``application_name`` wins over ``application_name``; ``listen_url`` is
    dropped (see :func:`kombu_url`).
    """
    dsn = split_listen_url(kombu_url(client))[0]
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
