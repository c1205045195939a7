"""Idempotent publish: one task per idempotency key within its window, one run per key."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

import swf_celery as swf
from swf_celery.errors import ArgumentError
from tests.helpers import pg_url, queue_size, sql, sql_value, wait_until
from tests.workflows.sample_flows import Diamond, chain

pytestmark = pytest.mark.db


# An in-process worker: with the worker tests (`slow`), not in the second server's pass.
@pytest.mark.slow
def test_a_second_publish_returns_the_first_task_and_runs_once(client: Celery,
                                                               db_url: str) -> None:
    first = client.tasks["record"].apply_async(["a"], headers={"idempotency_key": "order-1"})
    again = client.tasks["record"].apply_async(["b"], headers={"idempotency_key": "order-1"})
    other = client.tasks["record"].apply_async(["c"], headers={"idempotency_key": "order-2"})
    assert again.id == first.id != other.id
    assert queue_size(db_url, "celery") == 2
    with start_worker(client, pool="threads", concurrency=2, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=10):
        assert again.get(timeout=20) == "a"  # the first task's result
        assert other.get(timeout=20) == "c"
    assert sorted(r[0] for r in sql(db_url, "SELECT tag FROM task_runs")) == ["a", "c"]


def test_concurrent_publishes_of_one_key_store_one_message(client: Celery,
                                                           db_url: str) -> None:
    client.send_task("record", ["warm-up"])
    sql(db_url, "SELECT swf.queue_purge('celery')")
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def publish(n: int) -> None:
        barrier.wait()
        for k in range(5):
            ids.append(client.tasks["record"].apply_async(
                [f"{n}-{k}"], headers={"idempotency_key": f"key-{k}"}).id)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 40 and len(set(ids)) == 5
    assert queue_size(db_url, "celery") == 5


def test_plain_send_task_is_deduplicated_by_the_broker(client: Celery, db_url: str) -> None:
    # send_task is not a swf.Task: it returns its own id, but the broker stores one message.
    client.send_task("record", ["x"], headers={"idempotency_key": "k"})
    client.send_task("record", ["y"], headers={"idempotency_key": "k"})
    assert queue_size(db_url, "celery") == 1


def test_the_key_is_free_again_after_its_window(client: Celery, db_url: str) -> None:
    task = client.tasks["record"]
    first = task.apply_async(["a"], headers={"idempotency_key": "w",
                                             "idempotency_window": 0.2})
    sql(db_url, "UPDATE swf.idempotency_keys SET expires_at = now() - interval '1 s'")
    second = task.apply_async(["b"], headers={"idempotency_key": "w",
                                              "idempotency_window": 0.2})
    assert first.id != second.id and queue_size(db_url, "celery") == 2
    with pytest.raises(ArgumentError, match="idempotency_window"):
        task.apply_async(["c"], headers={"idempotency_key": "w", "idempotency_window": -1})


def test_a_rolled_back_publish_frees_its_key(client: Celery, db_url: str) -> None:
    task = client.tasks["record"]
    with psycopg.connect(pg_url(db_url)) as conn:
        with swf.transaction(conn):
            lost = task.apply_async(["a"], headers={"idempotency_key": "tx"})
        conn.rollback()
    kept = task.apply_async(["b"], headers={"idempotency_key": "tx"})
    assert kept.id != lost.id and queue_size(db_url, "celery") == 1


def test_workflow_runs_take_the_same_keys(db_url: str) -> None:
    first = swf.Executor.start(chain("a", queue="unconsumed"), {}, db_url,
                               idempotency_key="import-7")
    again = swf.Executor.start(chain("a", queue="unconsumed"), {}, db_url,
                               idempotency_key="import-7")
    assert again == first
    assert sql_value(db_url, "SELECT count(*) FROM swf.runs") == 1
    assert queue_size(db_url, "unconsumed") == 1
    result = swf.Executor.execute(Diamond, {"n": 5}, db_url, idempotency_key="d")
    same = swf.Executor.execute(Diamond, {"n": 99}, db_url, idempotency_key="d")
    assert same == result and result.output == {"join": {"sum": 16,
                                                         "saw": ["left", "right", "run"]}}


def test_concurrent_run_starts_of_one_key_make_one_run(db_url: str) -> None:
    ids: list[Any] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        barrier.wait()
        ids.append(swf.Executor.start(chain("a", queue="unconsumed"), {}, db_url,
                                      idempotency_key="same"))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    wait_until(lambda: sql_value(db_url, "SELECT count(*) FROM swf.runs") == 1, timeout=5)
    assert queue_size(db_url, "unconsumed") == 1
