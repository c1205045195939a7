"""``swf-celery drain-redis``: queued Celery messages move from Redis into the swf broker.

Real Redis (127.0.0.1:6379, database 7, queue names unique to the test process), real
kombu publishing on Redis, and a real ``celery worker`` on ``swf://`` that runs the moved
tasks afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from celery import Celery

from swf_celery.errors import MessageError
from swf_celery.ops.redis_drain import PRIORITY_SEP, drain_queue, held_by_workers
from tests.helpers import (
    REDIS_URL,
    create_task_runs,
    swf_url,
    task_runs,
    wait_until,
    worker_process,
)


def _redis_keys(client: Any, queue: str) -> dict[str, int]:
    """Length of every Redis list of ``queue`` (main, priority sub-queues, backups)."""
    return {key.decode(): client.llen(key) for key in client.scan_iter(match=f"{queue}*")}


@pytest.mark.slow
def test_queued_messages_move_and_run_on_a_swf_worker(db_url: str, redis_client: Any,
                                                      redis_queue: str) -> None:
    producer = Celery("producer", broker=REDIS_URL, set_as_current=False)
    backup = f"{redis_queue}.swf-draining"
    # A run interrupted between taking a message and storing it left one in the backup.
    producer.send_task("record", args=["leftover"], queue=redis_queue)
    assert redis_client.rpoplpush(redis_queue, backup) is not None
    for i in range(3):
        producer.send_task("record", args=[f"plain-{i}"], queue=redis_queue)
    producer.send_task("record", args=["low-6"], queue=redis_queue, priority=6)
    producer.send_task("record", args=["low-9"], queue=redis_queue, priority=9)
    producer.close()
    assert _redis_keys(redis_client, redis_queue) == {
        redis_queue: 3, backup: 1, f"{redis_queue}{PRIORITY_SEP}6": 1,
        f"{redis_queue}{PRIORITY_SEP}9": 1}

    assert drain_queue(REDIS_URL, redis_queue, db_url) == 6
    assert all(n == 0 for n in _redis_keys(redis_client, redis_queue).values())
    assert drain_queue(REDIS_URL, redis_queue, db_url) == 0  # nothing moved twice

    with psycopg.connect(db_url) as conn:
        (pgmq_name,) = conn.execute("SELECT pgmq_name FROM swf.queues WHERE name = %s",
                                    (redis_queue,)).fetchone()
        rows = conn.execute(
            f"SELECT message #>> '{{headers,argsrepr}}', message #>> '{{properties,priority}}' "
            f"FROM pgmq.q_{pgmq_name} ORDER BY msg_id").fetchall()  # name from swf.queues
    assert sorted(rows) == sorted([("['leftover']", "0"), ("['plain-0']", "0"),
                                   ("['plain-1']", "0"), ("['plain-2']", "0"),
                                   ("['low-6']", "6"), ("['low-9']", "9")])

    create_task_runs(db_url)

    def done() -> list[str]:
        return [tag for tag, phase in task_runs(db_url) if phase == "done"]

    # One task at a time, so the order they run in is the order the broker serves them.
    env = {"SWF_TEST_BROKER": swf_url(db_url)}
    with worker_process("tests.transport.broker_app", queues=[redis_queue], env=env,
                        pool="solo", concurrency=1) as worker:
        wait_until(lambda: len(done()) >= 6, timeout=60, what="6 tasks run", proc=worker)
        tags = done()
    # Leftover first (it was the oldest), priority 6 and 9 last, as on Redis.
    assert tags == ["leftover", "plain-0", "plain-1", "plain-2", "low-6", "low-9"]


def test_a_message_that_is_not_json_stays_in_the_backup(db_url: str, redis_client: Any,
                                                        redis_queue: str) -> None:
    redis_client.lpush(redis_queue, b"\x80 not json")
    with pytest.raises(MessageError, match="not JSON") as info:
        drain_queue(REDIS_URL, redis_queue, db_url)
    assert f"{redis_queue}.swf-draining" in str(info.value)
    assert redis_client.lrange(f"{redis_queue}.swf-draining", 0, -1) == [b"\x80 not json"]
    assert redis_client.llen(redis_queue) == 0


def test_messages_held_by_redis_workers_are_reported(redis_client: Any,
                                                     redis_queue: str) -> None:
    # kombu keeps a delivered, unacknowledged message in the hash "unacked" as
    # [message, exchange, routing_key]; only a warm shutdown puts it back on the list.
    key = f"{redis_queue}_unacked"
    redis_client.hset(key, "tag-1", json.dumps([{"body": "x"}, "", redis_queue]))
    redis_client.hset(key, "tag-2", '[{"body": "y"}, "", "other"]')
    assert held_by_workers(REDIS_URL, [redis_queue], unacked_key=key) == 1
    assert held_by_workers(REDIS_URL, ["nothing"], unacked_key=key) == 0
