"""``swf-celery drain-redis``: queued Celery messages move from Redis into the swf broker.

Real Redis (127.0.0.1:6379, database 7, queue names unique to the test process), real
kombu publishing on Redis, and a real ``celery worker`` on ``swf://`` that runs the moved
tasks afterwards.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery

from swf_celery.errors import MessageError
from swf_celery.redis_drain import PRIORITY_SEP, drain_queue, held_by_workers
from tests.celery_worker import read_log, worker_process
from tests.conftest import REDIS_URL


@pytest.fixture
def queue(redis_client: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"drain_{os.getpid()}_{request.node.name[-20:]}".replace("[", "_").replace("]", "")

    def keys() -> list[bytes]:
        return list(redis_client.scan_iter(match=f"{name}*"))

    for key in keys():
        redis_client.delete(key)
    yield name
    for key in keys():
        redis_client.delete(key)


def _redis_keys(client: Any, queue: str) -> dict[str, int]:
    """Length of every Redis list of ``queue`` (main, priority sub-queues, backups)."""
    return {key.decode(): client.llen(key) for key in client.scan_iter(match=f"{queue}*")}


def _wait_for_runs(url: str, count: int, worker: Any) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        with psycopg.connect(url) as conn:
            tags = [t for (t,) in conn.execute(
                "SELECT tag FROM task_runs WHERE phase = 'done' ORDER BY id").fetchall()]
        if len(tags) >= count or time.monotonic() > deadline:
            assert len(tags) == count, f"ran {tags}; worker log:\n{read_log(worker)[-3000:]}"
            return tags
        time.sleep(0.2)


@pytest.mark.slow
def test_queued_messages_move_and_run_on_a_swf_worker(db_url: str, redis_client: Any,
                                                      queue: str) -> None:
    producer = Celery("producer", broker=REDIS_URL, set_as_current=False)
    backup = f"{queue}.swf-draining"
    # A run interrupted between taking a message and storing it left one in the backup.
    producer.send_task("record", args=["leftover"], queue=queue)
    assert redis_client.rpoplpush(queue, backup) is not None
    for i in range(3):
        producer.send_task("record", args=[f"plain-{i}"], queue=queue)
    producer.send_task("record", args=["low-6"], queue=queue, priority=6)
    producer.send_task("record", args=["low-9"], queue=queue, priority=9)
    producer.close()
    assert _redis_keys(redis_client, queue) == {
        queue: 3, backup: 1, f"{queue}{PRIORITY_SEP}6": 1, f"{queue}{PRIORITY_SEP}9": 1}

    assert drain_queue(REDIS_URL, queue, db_url) == 6
    assert all(n == 0 for n in _redis_keys(redis_client, queue).values())
    assert drain_queue(REDIS_URL, queue, db_url) == 0  # nothing moved twice

    with psycopg.connect(db_url) as conn:
        (pgmq_name,) = conn.execute("SELECT pgmq_name FROM swf.queues WHERE name = %s",
                                    (queue,)).fetchone()
        rows = conn.execute(
            f"SELECT message #>> '{{headers,argsrepr}}', message #>> '{{properties,priority}}' "
            f"FROM pgmq.q_{pgmq_name} ORDER BY msg_id").fetchall()  # name from swf.queues
        conn.execute("CREATE TABLE task_runs (id bigserial PRIMARY KEY, tag text, phase text, "
                     "pid integer, at timestamptz DEFAULT clock_timestamp())")
    assert sorted(rows) == sorted([("['leftover']", "0"), ("['plain-0']", "0"),
                                   ("['plain-1']", "0"), ("['plain-2']", "0"),
                                   ("['low-6']", "6"), ("['low-9']", "9")])

    # One task at a time, so the order they run in is the order the broker serves them.
    env = {"SWF_TEST_BROKER": db_url.replace("postgresql://", "swf://", 1)}
    with worker_process("tests.apps.broker_app", queues=[queue], env=env, pool="solo",
                        concurrency=1) as worker:
        tags = _wait_for_runs(db_url, 6, worker)
    # Leftover first (it was the oldest), priority 6 and 9 last, as on Redis.
    assert tags == ["leftover", "plain-0", "plain-1", "plain-2", "low-6", "low-9"]


def test_a_message_that_is_not_json_stays_in_the_backup(db_url: str, redis_client: Any,
                                                        queue: str) -> None:
    redis_client.lpush(queue, b"\x80 not json")
    with pytest.raises(MessageError, match="not JSON") as info:
        drain_queue(REDIS_URL, queue, db_url)
    assert f"{queue}.swf-draining" in str(info.value)
    assert redis_client.lrange(f"{queue}.swf-draining", 0, -1) == [b"\x80 not json"]
    assert redis_client.llen(queue) == 0


def test_messages_held_by_redis_workers_are_reported(redis_client: Any, queue: str) -> None:
    # kombu keeps a delivered, unacknowledged message in the hash "unacked" as
    # [message, exchange, routing_key]; only a warm shutdown puts it back on the list.
    key = f"{queue}_unacked"
    redis_client.hset(key, "tag-1", json.dumps([{"body": "x"}, "", queue]))
    redis_client.hset(key, "tag-2", '[{"body": "y"}, "", "other"]')
    assert held_by_workers(REDIS_URL, [queue], unacked_key=key) == 1
    assert held_by_workers(REDIS_URL, ["nothing"], unacked_key=key) == 0
