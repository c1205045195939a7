"""Test fixtures: a real PostgreSQL, one migrated template, a fresh database per test.

The server is ``$SWF_DATABASE_URL`` when set, else the embedded one (started if needed).
A template database is migrated once per session; each test that asks for ``db_url``
gets its own ``CREATE DATABASE … TEMPLATE`` clone, dropped afterwards, so tests run in
any order and never see each other's rows.

Also shared by every folder: ``private_server`` (an embedded server a test may restart),
``redis_client``, and ``worker_role_url`` / ``client_role_url`` / ``operator_role_url``
(the test's database as a non-superuser role with the grants of ``swf-celery grant``).
Each folder's own fixtures are in its conftest.py; helper functions are in
:mod:`tests.helpers`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from swf_celery.ops import embedded, migrate
from tests.helpers import REDIS_URL, embedded_env, free_port, pg_url, run_cli

_counter = itertools.count()


def _with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture(scope="session")
def server_url() -> str:
    """URL of the server under test (any database on it)."""
    return pg_url(os.environ.get("SWF_DATABASE_URL") or embedded.start(quiet=True))


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    """Name of a migrated template database, created for this session."""
    name = f"swft_tpl_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _with_dbname(server_url, name)
    migrate.migrate(url)
    from swf_celery import db as swf_db

    swf_db.resolve(url).close()
    yield name
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def new_database(server_url: str, template: str | None) -> str:
    """Create a uniquely named database (from ``template`` if given); return its URL."""
    name = f"swft_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        if template:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)))
        else:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _with_dbname(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    """Drop a database made by :func:`new_database`, disconnecting its sessions."""
    from swf_celery import db as swf_db

    swf_db.resolve(url).close()
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    url = new_database(server_url, template_db)
    yield url
    drop_database(server_url, url)


@pytest.fixture(scope="module")
def module_db_url(server_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database shared by the tests of one module (e.g. with workers)."""
    url = new_database(server_url, template_db)
    yield url
    drop_database(server_url, url)


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """A fresh database that has never been migrated."""
    url = new_database(server_url, None)
    yield url
    drop_database(server_url, url)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that touches a database runs in the second CI pass too (`-m db`).
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if {"db_url", "module_db_url", "empty_db_url", "server_url"} & set(fixtures):
            item.add_marker(pytest.mark.db)


class PrivateServer:
    """A private embedded PostgreSQL that a test may restart without disturbing others."""

    def __init__(self, home: str, port: int) -> None:
        self.env = embedded_env(home, port)
        self.port = port
        #: The URL of database ``swf``, password included (known once started).
        self.url = ""

    def _run(self, *args: str) -> str:
        proc = run_cli(*args, env=self.env)
        if proc.returncode != 0:
            raise RuntimeError(f"swf-celery {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout.strip()

    def start(self) -> None:
        self._run("db", "start")
        self.url = self._run("db", "url")

    def data_dir(self) -> str:
        """The server's data directory (as root: in its service folder)."""
        import json

        return str(json.loads(self._run("db", "status", "--json"))["data_dir"])

    def remove(self) -> None:
        """Stop the server and delete its cluster (its service folder too, as root)."""
        self._run("db", "remove")

    def restart(self) -> None:
        """Fast restart: every connection to the server is dropped."""
        self._run("db", "restart")

    def stop(self) -> None:
        self._run("db", "stop")


@pytest.fixture(scope="session")
def private_server() -> Iterator[PrivateServer]:
    """A migrated embedded server of its own (database ``swf``), for restart tests."""
    import shutil
    import tempfile

    # Not under pytest's basetemp: every pytest run on the machine resets
    # /tmp/pytest-of-<user> to mode 0700, which (as root) takes away the traverse bit the
    # unprivileged server user needs, so a concurrent run would break our restart/stop.
    home = tempfile.mkdtemp(prefix="swf-private-pg-")
    server = PrivateServer(home, free_port())
    try:
        server.start()
        migrate.migrate(server.url)
        yield server
    finally:
        try:
            server.remove()
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _role_url(db_url: str, kind: str) -> Iterator[str]:
    """A LOGIN role with a password and the grants of ``kind`` on the test's database."""
    import secrets

    from swf_celery import db as swf_db
    from swf_celery.ops import grants
    from tests.helpers import as_role

    role = f"swft_{kind}_{os.getpid()}_{next(_counter)}"
    password = secrets.token_urlsafe(16)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
    grants.grant(role, kind, db_url)  # type: ignore[arg-type]
    url = as_role(db_url, role, password)
    try:
        yield url
    finally:
        swf_db.resolve(url).close()
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE usename = %s", (role,))
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def worker_role_url(db_url: str) -> Iterator[str]:
    """``db_url`` as a non-superuser role granted ``swf-celery grant --worker``."""
    yield from _role_url(db_url, "worker")


@pytest.fixture
def client_role_url(db_url: str) -> Iterator[str]:
    """``db_url`` as a non-superuser role granted ``swf-celery grant --client``."""
    yield from _role_url(db_url, "client")


@pytest.fixture
def operator_role_url(db_url: str) -> Iterator[str]:
    """``db_url`` as a non-superuser role granted ``swf-celery grant --operator``."""
    yield from _role_url(db_url, "operator")


@pytest.fixture
def redis_client() -> Iterator[Any]:
    """A client of :data:`tests.helpers.REDIS_URL`; skipped clearly where Redis is absent."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    yield client
    client.close()
