"""The broker's SQL interface: swf.queue_send / queue_remove_tasks / queue_remove_root.

Other parts (the workflow coordinator) enqueue Celery messages with these functions inside
their own transactions, so they are tested here directly on a real PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.helpers import kombu_message, next_visible, read_queue, sql


def read_all(conn: psycopg.Connection[Any], queues: list[str], qty: int = 100) -> list[tuple]:
    """(queue, msg_id, message) of the visible messages of ``queues``, read (held) as a
    consumer does: each queue in turn, priority 0 first, then oldest first."""
    return [(queue, msg_id, message) for queue in queues
            for msg_id, _, message, _ in read_queue(conn, queue, qty=qty)]


def test_send_inside_callers_transaction_commits_and_rolls_back_with_it(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        with conn.transaction():
            conn.execute("SELECT swf.queue_send('gpu_workers', %s)", [Jsonb(kombu_message("a"))])
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute("SELECT swf.queue_send('gpu_workers', %s)", [Jsonb(kombu_message("b"))])
            conn.execute("SELECT swf.queue_send('brand-new', %s)", [Jsonb(kombu_message("c"))])
            raise RuntimeError("caller's transaction fails")
        conn.commit()
        got = read_all(conn, ["gpu_workers"])
        assert [m["headers"]["id"] for _, _, m in got] == ["a"]
        # The queue created inside the rolled-back transaction left nothing behind.
        names = [r[0] for r in conn.execute("SELECT name FROM swf.queues")]
        assert names == ["gpu_workers"]


def test_send_keeps_message_and_fills_in_delivery_fields(db_url: str) -> None:
    msg = kombu_message("x1")
    del msg["properties"]["delivery_tag"]
    del msg["properties"]["delivery_info"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT swf.queue_send('celery', %s)", [Jsonb(msg)])
        [(_, _, got)] = read_all(conn, ["celery"])
    assert got["body"] == msg["body"] and got["headers"] == msg["headers"]
    assert got["properties"]["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert got["properties"]["delivery_tag"]


def test_priority_zero_first_then_fifo(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for tid, pri in [("low1", 9), ("mid", 5), ("none", None), ("high", 0), ("low2", 9)]:
            conn.execute("SELECT swf.queue_send('celery', %s)",
                         [Jsonb(kombu_message(tid, priority=pri))])
        order = [m["headers"]["id"] for _, _, m in read_all(conn, ["celery"])]
    assert order == ["none", "high", "mid", "low1", "low2"]


def test_delay_hides_message_until_due(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT swf.queue_send('celery', %s, 60)", [Jsonb(kombu_message("later"))])
        assert read_all(conn, ["celery"]) == []
        wait = next_visible(conn, "celery")  # seconds until the delayed message is due
        assert 55 < wait <= 60
        assert conn.execute("SELECT swf.queue_size('celery')").fetchone()[0] == 1


def test_remove_tasks_and_root_delete_queued_and_delayed_not_held(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        send = "SELECT swf.queue_send(%s, %s, %s)"
        conn.execute(send, ["celery", Jsonb(kombu_message("held")), 0])
        held = read_all(conn, ["celery"])  # a consumer now holds "held"
        assert len(held) == 1
        conn.execute(send, ["celery", Jsonb(kombu_message("queued")), 0])
        conn.execute(send, ["gpu_workers", Jsonb(kombu_message("delayed")), 3600])
        conn.execute(send, ["gpu_workers", Jsonb(kombu_message("other")), 0])
        for i in range(3):
            conn.execute(send, [f"canvas-{i}", Jsonb(kombu_message(f"c{i}", root_id="R")), 0])
        removed = conn.execute("SELECT swf.queue_remove_tasks(%s)",
                               [["held", "queued", "delayed", "missing"]]).fetchone()[0]
        assert removed == 2
        assert conn.execute("SELECT swf.queue_remove_root('R')").fetchone()[0] == 3
        assert conn.execute("SELECT swf.queue_remove_root('R')").fetchone()[0] == 0
        left = read_all(conn, ["celery", "gpu_workers", "canvas-0"])
        assert [m["headers"]["id"] for _, _, m in left] == ["other"]


def test_send_refuses_malformed_input_clearly(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="kombu message"):
            conn.execute("SELECT swf.queue_send('celery', '[1]')")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="delay_seconds"):
            conn.execute("SELECT swf.queue_send('celery', %s, -1)", [Jsonb(kombu_message("n"))])
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="control characters"):
            conn.execute("SELECT swf.queue_send(%s, %s)", ["a\tb", Jsonb(kombu_message("n"))])
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="255 bytes"):
            conn.execute("SELECT swf.queue_send(%s, %s)", ["é" * 128, Jsonb(kombu_message("n"))])
        assert conn.execute("SELECT count(*) FROM swf.queues").fetchone()[0] == 0


def test_wakeups_are_sent_only_to_an_armed_queue_and_coalesced(db_url: str) -> None:
    from psycopg import sql

    with psycopg.connect(db_url, autocommit=True) as listener, \
            psycopg.connect(db_url, autocommit=True) as conn:
        pgmq_name = conn.execute("SELECT pgmq_name FROM swf.queue_ensure('celery')").fetchone()[0]
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"swfq_{pgmq_name}")))

        def send(n: int) -> None:
            for i in range(n):  # one transaction each
                conn.execute("SELECT swf.queue_send('celery', %s)", [Jsonb(kombu_message(f"{i}"))])

        def received() -> int:
            return len(list(listener.notifies(timeout=0.3)))

        send(5)
        assert received() == 0  # nobody waits: producers do not NOTIFY
        assert conn.execute("SELECT swf.queue_arm(ARRAY['celery'])").fetchone()[0] == 0
        send(5)
        assert received() == 1  # the first commit wakes the consumer, the rest do not
        conn.execute("SELECT swf.queue_arm(ARRAY['celery'])")
        with conn.transaction():
            send(3)
        assert received() == 1


def test_workers_declaring_a_new_queue_at_once_all_get_it(db_url: str) -> None:
    """Workers started together declare their queues at the same moment: every declaration
    returns the queue (one row), none mistakes the other's row for a name collision."""
    import threading

    failures: list[BaseException] = []
    for round_no in range(30):
        name = f"raced_{round_no}"
        barrier = threading.Barrier(6)

        def declare(name: str = name, barrier: threading.Barrier = barrier) -> None:
            with psycopg.connect(db_url, autocommit=True) as conn:
                barrier.wait()
                try:
                    conn.execute("SELECT swf.queue_ensure(%s)", (name,))
                except psycopg.Error as exc:
                    failures.append(exc)

        threads = [threading.Thread(target=declare) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    assert sql(db_url, "SELECT count(*) FROM swf.queues WHERE name LIKE 'raced\\_%'")[0][0] == 30
