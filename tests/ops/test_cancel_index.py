"""Cancels by task id and root id: index probes, and one statement per queue table."""

from __future__ import annotations

import hashlib
import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

import swf_celery
from swf_celery.ops import migrate
from swf_celery.transport.names import queue_table
from swf_celery.transport.storage import QueueStorage
from tests.helpers import kombu_message, pg_url, sql, sql_value, wait_until


def send(url: str, queue: str, task_id: str, root_id: str) -> None:
    sql(url, "SELECT swf.queue_send(%s, %s)",
        (queue, Jsonb(kombu_message(task_id, root_id=root_id, queue=queue))))


def indexes(url: str, queue: str) -> set[str]:
    pgmq_name = sql_value(url, "SELECT pgmq_name FROM swf.queues WHERE name = %s", (queue,))
    return {r[0] for r in sql(url, "SELECT indexdef FROM pg_indexes WHERE schemaname = 'pgmq' "
                                   "AND tablename = %s", ("q_" + pgmq_name,))}


def uses_index(url: str, queue: str, key: str) -> bool:
    pgmq_name = sql_value(url, "SELECT pgmq_name FROM swf.queues WHERE name = %s", (queue,))
    with psycopg.connect(pg_url(url)) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(pgsql.SQL(
            "EXPLAIN DELETE FROM {} WHERE (headers ->> {}) = ANY (%s)").format(
                pgsql.Identifier(*queue_table(pgmq_name)), pgsql.Literal(key)),
            (["x"],)).fetchall()
        conn.rollback()
    return any(f"_{key[:-3] if key.endswith('_id') else key}_idx" in r[0] for r in plan)


def test_queues_existing_before_the_migration_get_the_indexes(
        empty_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    every = migrate.available()
    # A database at version 11 with a durable queue as that release made it: its pgmq table
    # without the task id / root id indexes (the functions of that release are not needed).
    monkeypatch.setattr(migrate, "available", lambda: [m for m in every if m.version < 12])
    monkeypatch.setattr(migrate.schema, "function_files", lambda: ())
    migrate.migrate(empty_db_url)
    pgmq_name = "k_old_queue_" + hashlib.sha256(b"old_queue").hexdigest()[:12]
    sql(empty_db_url, "INSERT INTO swf.queues (name, pgmq_name) VALUES ('old_queue', %s)",
        (pgmq_name,))
    sql(empty_db_url, "SELECT pgmq.create(%s)", (pgmq_name,))
    sql(empty_db_url, "SELECT pgmq.send(%s, %s, %s)", (
        pgmq_name, Jsonb(kombu_message("t1", root_id="r1", queue="old_queue")),
        Jsonb({"task_id": "t1", "root_id": "r1"})))
    assert not any("task_id" in i for i in indexes(empty_db_url, "old_queue"))
    monkeypatch.undo()
    migrate.migrate(empty_db_url)
    assert uses_index(empty_db_url, "old_queue", "task_id")
    assert uses_index(empty_db_url, "old_queue", "root_id")


def test_new_queues_get_the_indexes_and_cancels_remove_by_them(db_url: str) -> None:
    for i in range(3):
        send(db_url, f"q{i}", f"task-{i}", "root-a")
        send(db_url, f"q{i}", f"other-{i}", "root-b")
    assert uses_index(db_url, "q0", "task_id") and uses_index(db_url, "q0", "root_id")
    assert sql_value(db_url, "SELECT swf.queue_remove_tasks(ARRAY['task-1', 'other-2'])") == 2
    assert sql(db_url, "SELECT removed, held FROM swf.cancel_canvas('root-a')") == [(2, [])]
    assert sql_value(db_url, "SELECT swf.queue_remove_root('root-b')") == 2
    assert sum(sql_value(db_url, "SELECT swf.queue_size(%s)", (f"q{i}",)) for i in range(3)) == 0


def test_cancel_reports_a_message_fetched_while_it_runs(db_url: str) -> None:
    root = str(uuid.uuid4())
    send(db_url, "celery", "first", root)
    send(db_url, "celery", "second", root)
    pgmq_name = sql_value(db_url, "SELECT pgmq_name FROM swf.queues WHERE name = 'celery'")
    read = QueueStorage("celery", pgmq_name, "pgmq").statement("read")
    outcome: list[Any] = []
    # A consumer fetches "first" in a transaction that has not committed yet ...
    with psycopg.connect(pg_url(db_url)) as consumer:
        fetched = consumer.execute(read, {"qty": 1, "vt": 60, "acks": [], "receipts": [],
                                          "queue": "celery"}).fetchall()
        assert len(fetched) == 1
        canceller = threading.Thread(target=lambda: outcome.append(
            swf_celery.cancel_canvas(root, db_url, terminate=False)))
        canceller.start()
        # ... while the cancel runs: it waits for that row, then sees it held.
        wait_until(lambda: sql_value(
            db_url, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%%cancel_canvas%%'") == 1, what="cancel waiting")
        consumer.commit()
    canceller.join(30)
    assert outcome and outcome[0].removed == 1 and outcome[0].revoked == ["first"]
    assert sql_value(db_url, "SELECT swf.queue_size('celery')") == 0
