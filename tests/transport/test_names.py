"""Hostile queue names: each is refused with a clear error or round-trips a message, and
nothing stray is left in the database."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from kombu import Connection, Exchange, Producer, Queue

import swf_celery  # noqa: F401 - registers swf://
from swf_celery.errors import QueueNameError
from swf_celery.transport.names import check_queue_name
from tests.helpers import drain, swf_url

ROUND_TRIP = [
    "a;drop",
    "x'--",
    'q"; DROP TABLE swf.queues; --',
    "$1$",
    "celery@host.example.com.celery.pidbox",
    "0f3c2b9e-5a6d-4c1e-9b7a-2d8e6f1a3c5b.reply.celery.pidbox",
    "GPU.high",
    "gpu-workers",
    "gpu_workers",
    "Gpu_Workers",  # differs from gpu_workers only in case: must not collide
    "очередь-задач",
    "キュー",
    "emoji 🚀 queue",
    "x" * 255,
    "é" * 127,  # 254 bytes
]

REFUSED = [
    ("", "empty"),
    ("a\x00b", "control characters"),
    ("tab\tname", "control characters"),
    ("new\nline", "control characters"),
    ("x" * 300, "255 bytes"),
    ("é" * 128, "255 bytes"),
]


@pytest.mark.parametrize("name,rule", REFUSED)
def test_check_queue_name_names_the_rule(name: str, rule: str) -> None:
    with pytest.raises(QueueNameError, match=rule):
        check_queue_name(name)


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")}


def test_hostile_names_round_trip_or_are_refused(db_url: str) -> None:
    before = _tables(db_url)
    conn = Connection(swf_url(db_url))
    producer = Producer(conn.channel())
    for name in ROUND_TRIP:
        q = Queue(name, Exchange(""), routing_key=name)
        q(conn.channel()).declare()
        producer.publish({"queue": name}, exchange="", routing_key=name, serializer="json")
    for name, rule in REFUSED:
        with pytest.raises(QueueNameError, match=rule):
            producer.publish({"queue": name}, exchange="", routing_key=name, serializer="json")

    got: dict[str, Any] = {}
    for name in ROUND_TRIP:
        q = Queue(name, Exchange(""), routing_key=name)
        for body, _ in drain(conn, q, expect=1, timeout=5):
            got.setdefault(name, body)
    conn.release()
    assert got == {name: {"queue": name} for name in ROUND_TRIP}

    with psycopg.connect(db_url) as c:
        mapped = c.execute("SELECT name, pgmq_name FROM swf.queues").fetchall()
        assert sorted(n for n, _ in mapped) == sorted(ROUND_TRIP)
        assert len({p for _, p in mapped}) == len(ROUND_TRIP)
        assert all(len(p) <= 47 for _, p in mapped)
    # Exactly a queue and an archive table per accepted name; nothing else appeared.
    created = _tables(db_url) - before
    expected = {f"pgmq.{kind}_{p}" for _, p in mapped for kind in ("q", "a")}
    assert created == expected
