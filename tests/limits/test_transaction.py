"""Enqueue inside the caller's transaction: ``with swf.transaction(conn):``.

Messages published, runs started and channel messages sent inside the block are rows of the
caller's transaction: nothing before its commit, nothing at all after a rollback. Tried with
psycopg, SQLAlchemy Connection and Session, Django where installed, and a real worker.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

import swf_celery as swf
from swf_celery.errors import ConfigurationError
from swf_celery.workflows import definition, steps
from tests.helpers import pg_url, queue_size, sql, sql_value, wait_until
from tests.workflows.sample_flows import chain

pytestmark = pytest.mark.db


def _orders(url: str) -> None:
    sql(url, "CREATE TABLE orders (id serial PRIMARY KEY, item text)")


def _count(url: str, table: str) -> int:
    return int(sql_value(url, f"SELECT count(*) FROM {table}"))  # noqa: S608 - test tables


def test_psycopg_rollback_leaves_nothing_and_commit_publishes(client: Celery,
                                                             db_url: str) -> None:
    _orders(db_url)
    queue_size(db_url, "celery")  # the queue exists (created outside any transaction)
    client.send_task("record", ["warm-up"]).id  # noqa: B018 - creates the queue
    sql(db_url, "SELECT swf.queue_purge('celery')")
    with psycopg.connect(pg_url(db_url)) as conn:
        with swf.transaction(conn):
            conn.execute("INSERT INTO orders (item) VALUES ('lost')")
            client.send_task("record", ["rolled-back"])
            # Not visible to anyone else (a worker) before commit.
            assert queue_size(db_url, "celery") == 0
        conn.rollback()
        assert queue_size(db_url, "celery") == 0 and _count(db_url, "orders") == 0
        with swf.transaction(conn):
            conn.execute("INSERT INTO orders (item) VALUES ('kept')")
            client.send_task("record", ["committed"])
        assert queue_size(db_url, "celery") == 0  # still the caller's to commit
        conn.commit()
    assert queue_size(db_url, "celery") == 1 and _count(db_url, "orders") == 1


def test_an_autocommit_connection_gets_a_transaction_for_the_block(client: Celery,
                                                                  db_url: str) -> None:
    client.send_task("record", ["warm-up"])
    sql(db_url, "SELECT swf.queue_purge('celery')")
    with psycopg.connect(pg_url(db_url), autocommit=True) as conn:
        with pytest.raises(RuntimeError), swf.transaction(conn):
            client.send_task("record", ["raised"])
            raise RuntimeError("the handler failed")
        assert queue_size(db_url, "celery") == 0
        with swf.transaction(conn):
            client.send_task("record", ["done"])
    assert queue_size(db_url, "celery") == 1


def test_sqlalchemy_connection_and_session(client: Celery, db_url: str) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from sqlalchemy.orm import Session

    _orders(db_url)
    client.send_task("record", ["warm-up"])
    sql(db_url, "SELECT swf.queue_purge('celery')")
    engine = sqlalchemy.create_engine(pg_url(db_url).replace("postgresql://",
                                                             "postgresql+psycopg://", 1))
    insert = sqlalchemy.text("INSERT INTO orders (item) VALUES (:item)")
    try:
        with engine.connect() as conn:
            with swf.transaction(conn):
                conn.execute(insert, {"item": "a"})
                client.send_task("record", ["a"])
            conn.rollback()
            with swf.transaction(conn):
                conn.execute(insert, {"item": "b"})
                client.send_task("record", ["b"])
            conn.commit()
        assert queue_size(db_url, "celery") == 1 and _count(db_url, "orders") == 1
        with Session(engine) as session:
            with swf.transaction(session):
                session.execute(insert, {"item": "c"})
                client.send_task("record", ["c"])
            session.rollback()
            with swf.transaction(session):
                session.execute(insert, {"item": "d"})
                client.send_task("record", ["d"])
            session.commit()
    finally:
        engine.dispose()
    assert queue_size(db_url, "celery") == 2 and _count(db_url, "orders") == 2


def test_django_connection(client: Celery, db_url: str) -> None:
    pytest.importorskip("django", reason="Django is not installed (optional)")
    from django.conf import settings

    if not settings.configured:
        info = psycopg.conninfo.conninfo_to_dict(pg_url(db_url))
        settings.configure(DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql", "NAME": info["dbname"],
            "USER": info.get("user", ""), "PASSWORD": info.get("password", ""),
            "HOST": info.get("host", ""), "PORT": info.get("port", "")}})
    from django.db import connection

    client.send_task("record", ["warm-up"])
    sql(db_url, "SELECT swf.queue_purge('celery')")
    with pytest.raises(RuntimeError), swf.transaction(connection):
        client.send_task("record", ["raised"])
        raise RuntimeError("rolled back")
    with swf.transaction(connection):
        client.send_task("record", ["kept"])
    connection.close()
    assert queue_size(db_url, "celery") == 1


def test_runs_and_channel_messages_join_the_transaction(db_url: str) -> None:
    wf = chain("a", "b", queue="unconsumed")
    with psycopg.connect(pg_url(db_url)) as conn:
        with swf.transaction(conn):
            run_id = swf.Executor.start(wf, {}, db_url)
            swf.send_with_notify("orders", {"id": 1}, db_url)
            assert sql_value(db_url, "SELECT count(*) FROM swf.runs") == 0
        conn.rollback()
        assert sql_value(db_url, "SELECT count(*) FROM swf.runs") == 0
        assert swf.read_pending("orders", db_url) == [] if _has_channel(db_url) else True
        with swf.transaction(conn):
            run_id = swf.Executor.start(wf, {}, db_url)
            swf.send_with_notify("orders", {"id": 2}, db_url)
        conn.commit()
    assert sql_value(db_url, "SELECT id::text FROM swf.runs") == run_id
    assert [m.body for m in swf.read_pending("orders", db_url)] == [{"id": 2}]
    assert queue_size(db_url, "unconsumed") == 1  # the root step's message


def _has_channel(db_url: str) -> bool:
    return bool(sql_value(db_url, "SELECT count(*) FROM swf.channels WHERE channel = 'orders'"))


def test_anything_else_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="psycopg connection, a SQLAlchemy"), \
            swf.transaction(object()):
        pass


# An in-process worker: with the worker tests (`slow`), not in the second server's pass.
@pytest.mark.slow
def test_a_worker_runs_the_committed_tasks_only(client: Celery, db_url: str) -> None:
    with start_worker(client, pool="threads", concurrency=2, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=10):
        with psycopg.connect(pg_url(db_url)) as conn:
            for i in range(20):
                with swf.transaction(conn):
                    client.send_task("record", [f"{'kept' if i % 2 else 'lost'}-{i}"])
                conn.commit() if i % 2 else conn.rollback()
        wait_until(lambda: _count(db_url, "task_runs") >= 10, timeout=30, what="10 runs")
    tags = [r[0] for r in sql(db_url, "SELECT tag FROM task_runs")]
    assert sorted(tags) == sorted(f"kept-{i}" for i in range(1, 20, 2))


def _unused(*_: Any) -> None:
    steps.parse_options({}, where="x")
    definition.build("x", [])


# An in-process worker: with the worker tests (`slow`), not in the second server's pass.
@pytest.mark.slow
def test_a_first_keyed_publish_marks_its_queue_within_the_transaction(client: Celery,
                                                                       db_url: str) -> None:
    limited = "SELECT limited FROM swf.queues WHERE name = 'keyed'"
    with psycopg.connect(pg_url(db_url)) as conn:
        with swf.transaction(conn):
            client.send_task("record", ["plain"], queue="keyed")  # holds the queue's table
            client.send_task("record", ["k"], queue="keyed", headers={"swf_key": "tenant:1"})
        conn.rollback()
        assert sql_value(db_url, limited) is False
        with swf.transaction(conn):
            client.send_task("record", ["plain"], queue="keyed")
            client.send_task("record", ["k"], queue="keyed", headers={"swf_key": "tenant:1"})
        conn.commit()
    assert sql_value(db_url, limited) is True and queue_size(db_url, "keyed") == 2
    # Marked inside a transaction that had written to the queue: no indexes yet; its first
    # consumer adds them, and delivers the message.
    index = ("SELECT to_regclass('pgmq.q_' || pgmq_name || '_free_idx') IS NOT NULL "
             "FROM swf.queues WHERE name = 'keyed'")
    assert sql_value(db_url, index) is False
    with start_worker(client, pool="threads", concurrency=1, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=10, queues=["keyed"]):
        wait_until(lambda: _count(db_url, "task_runs") == 2, timeout=30, what="both tasks")
    assert sql_value(db_url, index) is True
