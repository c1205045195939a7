"""Database handle resolution and error translation, against a real server."""

from __future__ import annotations

import psycopg_pool
import pytest
import sqlalchemy

from swf_celery import db
from swf_celery.errors import ConfigurationError, DatabaseError, DatabaseUnavailable
from tests.helpers import swf_url


def _select_one(repo: object) -> int:
    with db.resolve(repo).connection() as conn:
        return conn.execute("SELECT 41 + 1").fetchone()[0]  # type: ignore[index]


def test_dsn_engine_and_pool_all_work(db_url: str) -> None:
    assert _select_one(db_url) == 42
    assert _select_one(swf_url(db_url)) == 42
    engine = sqlalchemy.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        assert _select_one(engine) == 42
    finally:
        engine.dispose()
    with psycopg_pool.ConnectionPool(db_url, min_size=1, max_size=2) as pool:
        assert _select_one(pool) == 42


def test_engine_with_another_driver_is_refused() -> None:
    pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="postgresql\\+psycopg"):
        db.resolve(engine)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mysql://root@localhost/x", "not PostgreSQL"),
        ("postgresql://host:notaport/db", "malformed"),
        ("just-a-word", "not a URL"),
        ("", "empty"),
    ],
)
def test_malformed_urls_name_the_problem(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        db.resolve(url)


def test_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot reach PostgreSQL"):
        with db.resolve("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2").connect():
            pass


def test_sql_errors_are_translated(db_url: str) -> None:
    with pytest.raises(DatabaseError, match="no_such_table"):
        with db.resolve(db_url).connection() as conn:
            conn.execute("SELECT * FROM no_such_table")


def test_other_objects_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="DSN string"):
        db.resolve(42)


def test_pool_survives_a_database_restart(private_server) -> None:  # type: ignore[no-untyped-def]
    database = db.resolve(private_server.url)
    try:
        assert _select_one(database) == 42
        private_server.restart()
        assert _select_one(database) == 42  # the dead pooled connection is replaced
    finally:
        database.close()


def test_deadlock_is_a_conflict_not_an_outage(db_url: str) -> None:
    from swf_celery.errors import TransactionConflict

    with pytest.raises(TransactionConflict, match="retry"):
        with db.resolve(db_url).connection() as conn:
            conn.execute("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01', "
                         "MESSAGE = 'deadlock detected'; END $$")


def test_forked_child_gets_its_own_pool_and_leaves_the_parents_alone(db_url: str) -> None:
    import os

    database = db.resolve(db_url)

    def backend_pid() -> int:
        with database.connection() as conn:
            return conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]

    parent_session = backend_pid()  # the parent's pool is open before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a prefork worker would do this
        try:
            os.write(write, str(backend_pid()).encode())
            database.close()
        finally:
            os._exit(0)
    os.close(write)
    child_session = int(os.read(read, 32) or b"0")
    os.waitpid(pid, 0)
    assert child_session not in (0, parent_session)  # its own connection, not our socket
    with database.connection() as conn:  # our session was not ended by the child
        alive = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                             (parent_session,)).fetchone()[0]  # type: ignore[index]
    assert alive == 1


def test_session_on_a_read_only_server_is_replaced(db_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A pooled session that finds its server read-only (a standby, a demoted primary) is
    an outage to retry, and the pool opens a new session instead of handing it out again."""
    monkeypatch.setenv("SWF_POOL_SIZE", "1")
    database = db.Database(db_url)
    try:
        with database.connection() as conn:  # as if the server had become a standby
            conn.execute("SET SESSION default_transaction_read_only = on")
            first = conn.info.backend_pid
        with pytest.raises(DatabaseUnavailable, match="read-only"):
            database.fetch_one("CREATE TEMP TABLE t (x int)")
        with database.connection() as conn:
            assert conn.info.backend_pid != first
            conn.execute("CREATE TEMP TABLE t (x int)")
    finally:
        database.close()
