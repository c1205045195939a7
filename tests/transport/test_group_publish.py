"""A Celery group, and a chord's header, reach PostgreSQL as one insert per queue.

Every message of an insert carries the same ``xmin`` (the transaction that stored it); a
group sent one message at a time on the autocommit broker connection would carry one
transaction per message. The group runs on a real worker afterwards, and what fails while the
group is built stores nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from celery import Celery, chord, group
from celery.contrib.testing.worker import start_worker
from kombu.exceptions import EncodeError
from psycopg.types.json import Jsonb

import swf_celery as swf
from tests.helpers import kombu_message, queue_size, sql, sql_value
from tests.results.backend_app import make_app


@pytest.fixture
def app(db_url: str) -> Iterator[Celery]:
    made = make_app(db_url, f"groups-{uuid.uuid4().hex[:8]}")
    yield made
    made.backend.close()
    made.close()


def _transactions(url: str, queue: str) -> list[int]:
    """Messages of ``queue`` per storing transaction, in the order they were stored."""
    table = sql_value(url, "SELECT 'pgmq.' || quote_ident('q_' || pgmq_name) FROM swf.queues "
                           "WHERE name = %s", (queue,))
    rows = sql(url, f"SELECT xmin::text, count(*) FROM {table} "  # noqa: S608 - a quoted name
                    "GROUP BY 1 ORDER BY min(msg_id)")
    return [int(n) for _, n in rows]


def _args(url: str, queue: str) -> list[str]:
    table = sql_value(url, "SELECT 'pgmq.' || quote_ident('q_' || pgmq_name) FROM swf.queues "
                           "WHERE name = %s", (queue,))
    return [r[0] for r in sql(url, f"SELECT message -> 'headers' ->> 'argsrepr' "  # noqa: S608
                                   f"FROM {table} ORDER BY msg_id")]


def test_a_group_is_stored_in_one_insert_in_order_and_runs(app: Celery, db_url: str) -> None:
    echo = app.tasks["t.echo"]
    queue = app.conf.task_default_queue
    result = group(echo.s(i) for i in range(200)).apply_async()

    assert _transactions(db_url, queue) == [200]
    assert _args(db_url, queue) == [f"({i},)" for i in range(200)]
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=20):
        assert result.get(timeout=60) == list(range(200))


def test_a_chord_header_is_stored_in_one_insert(app: Celery, db_url: str) -> None:
    t = app.tasks
    queue = app.conf.task_default_queue
    result = chord(t["t.add"].s(i, i) for i in range(50))(t["t.tsum"].s())

    assert _transactions(db_url, queue) == [50]
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=20):
        assert result.get(timeout=60) == sum(2 * i for i in range(50))


def test_a_group_over_two_queues_takes_one_insert_per_queue(app: Celery, db_url: str) -> None:
    echo = app.tasks["t.echo"]
    queue = app.conf.task_default_queue
    other = queue + "-other"
    group([echo.s(i).set(queue=queue if i % 2 else other) for i in range(20)]).apply_async()

    assert _transactions(db_url, queue) == [10]
    assert _transactions(db_url, other) == [10]
    assert _args(db_url, other) == [f"({i},)" for i in range(0, 20, 2)]


def test_a_group_whose_message_cannot_be_built_stores_nothing(app: Celery,
                                                              db_url: str) -> None:
    echo = app.tasks["t.echo"]
    queue = app.conf.task_default_queue
    sql(db_url, "SELECT swf.queue_ensure(%s)", (queue,))

    with pytest.raises(EncodeError):
        group([echo.s(1), echo.s(2), echo.s(object()), echo.s(4)]).apply_async()

    assert queue_size(db_url, queue) == 0
    group([echo.s(1), echo.s(2)]).apply_async()  # the producer works on
    assert _transactions(db_url, queue) == [2]


def test_a_group_in_the_callers_transaction_commits_and_rolls_back_with_it(
        app: Celery, db_url: str) -> None:
    echo = app.tasks["t.echo"]
    queue = app.conf.task_default_queue
    sql(db_url, "SELECT swf.queue_ensure(%s)", (queue,))
    with psycopg.connect(db_url) as conn:
        with swf.transaction(conn):
            group(echo.s(i) for i in range(5)).apply_async()
            assert queue_size(db_url, queue) == 0  # not visible before COMMIT
        conn.rollback()
    assert queue_size(db_url, queue) == 0

    with psycopg.connect(db_url, autocommit=True) as conn, swf.transaction(conn):
        group(echo.s(i) for i in range(5)).apply_async()
    assert _transactions(db_url, queue) == [5]


def test_an_idempotent_task_in_a_group_keeps_its_order(app: Celery, db_url: str) -> None:
    """A message with an idempotency key is sent on its own, after what the group kept."""
    echo = app.tasks["t.echo"]
    queue = app.conf.task_default_queue
    once = echo.s("once").set(headers={"idempotency_key": "k-1"})
    group([echo.s("a"), echo.s("b"), once, echo.s("c")]).apply_async()
    group([once.clone()]).apply_async()  # the key holds: not stored again

    assert _args(db_url, queue) == ["('a',)", "('b',)", "('once',)", "('c',)"]
    assert _transactions(db_url, queue) == [2, 1, 1]


def test_many_messages_in_one_transaction_wake_each_sleeper_once(db_url: str) -> None:
    """The wake-up of a multi-row insert turns the line of sleepers once, not per row."""
    sql(db_url, "SELECT swf.queue_ensure('jobs')")
    listeners = [psycopg.connect(db_url, autocommit=True) for _ in range(2)]
    try:
        for n, listener in enumerate(listeners):
            listener.execute(f'LISTEN "swfw_000000000000000{n}"')
            sql(db_url, "SELECT swf.queue_sleep(ARRAY['jobs'], %s, %s)",
                (f"swfw_000000000000000{n}", listener.info.backend_pid))
        with psycopg.connect(db_url) as conn:
            conn.execute("SELECT swf.queue_send_many('jobs', %s)",
                         ([Jsonb(kombu_message(f"t-{i}")) for i in range(100)],))
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the deferred wake-ups run now
            updated = conn.execute("SELECT pg_stat_get_xact_tuples_updated("
                                   "'swf.queue_sleepers'::regclass)").fetchone()
            conn.commit()
        assert updated == (2,)
        for listener in listeners:
            assert len(list(listener.notifies(timeout=0.5))) == 1
    finally:
        for listener in listeners:
            listener.close()


def test_queue_send_many_returns_ids_in_order_and_names_a_bad_message(db_url: str) -> None:
    ids = sql_value(db_url, "SELECT swf.queue_send_many('jobs', %s)",
                    ([Jsonb(kombu_message(f"t-{i}")) for i in range(3)],))
    assert len(ids) == 3 and ids == sorted(ids)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="queue_send_many: message"):
        sql(db_url, "SELECT swf.queue_send_many('jobs', %s)",
            ([Jsonb(kombu_message("ok")), Jsonb({"no": "body"})],))
    assert queue_size(db_url, "jobs") == 3
