"""Deliveries are fenced: a holder whose visibility timeout lapsed can no longer ack, reject,
requeue or extend the message another consumer now holds; the visibility keeper goes on
extending after any failure."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest
from kombu import Exchange, Queue
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

import swf_celery  # noqa: F401 - registers swf://
from swf_celery.transport.storage import QueueStorage
from tests.helpers import kombu_message, publish, read_queue, sql, sql_value, wait_until

STORAGES = ["pgmq", "transient"]


def _queue(name: str, storage: str) -> Queue:
    """A kombu queue stored as ``storage`` (x-expires makes it transient)."""
    expires = 600 if storage == "transient" else None
    return Queue(name, Exchange(name), name, expires=expires)


def _messages(url: str, queue: str) -> list[tuple[int, int, float, float]]:
    """(msg_id, read_ct, seconds until visible, vt as epoch) of every message of ``queue``."""
    pgmq_name, storage = sql(url, "SELECT pgmq_name, storage FROM swf.queues WHERE name = %s",
                             (queue,))[0]
    table = QueueStorage(queue, pgmq_name, storage).table()
    where = pgsql.SQL("TRUE")
    if storage == "transient":
        where = pgsql.SQL("queue = {}").format(pgsql.Literal(queue))
    return sql(url, pgsql.SQL(
        "SELECT msg_id, read_ct, extract(epoch FROM vt - clock_timestamp())::float8, "
        "extract(epoch FROM vt)::float8 FROM {} WHERE {} ORDER BY msg_id").format(table, where))


@pytest.mark.parametrize("storage", STORAGES)
def test_stale_receipt_changes_nothing_in_sql(db_url: str, storage: str) -> None:
    sql(db_url, "SELECT swf.queue_ensure('fenced', %s)", (600_000 if storage == "transient"
                                                          else 0,))
    sql(db_url, "SELECT swf.queue_send('fenced', %s)", (Jsonb(kombu_message("t-1")),))
    with psycopg.connect(db_url, autocommit=True) as c:
        [(msg_id, first, *_)] = read_queue(c, "fenced", vt=0)  # its timeout lapses at once
        [(again, second, *_)] = read_queue(c, "fenced", vt=30)  # another consumer's
        assert (again, first, second) == (msg_id, 1, 2)

        def value(query: str, receipt: int | None) -> Any:
            return c.execute(query, {"ids": [msg_id], "r": [receipt]}).fetchone()[0]

        stale = [
            "SELECT swf.queue_extend(ARRAY['fenced'], %(ids)s, 1, %(r)s)",
            "SELECT swf.queue_reject('fenced', %(ids)s, true, 'x', %(r)s)",
            "SELECT swf.queue_reject('fenced', %(ids)s, false, 'x', %(r)s)",
            "SELECT swf.queue_ack('fenced', %(ids)s, false, %(r)s)",
            "SELECT swf.queue_ack('fenced', %(ids)s, true, %(r)s)",
        ]
        for query in stale:
            assert value(query, first) == 0, query
        storage_row = c.execute("SELECT pgmq_name, storage FROM swf.queues "
                                "WHERE name = 'fenced'").fetchone()
        statements = QueueStorage("fenced", *storage_row)
        assert c.execute(statements.statement("delete"), {
            "queue": "fenced", "ids": [msg_id], "receipts": [first]}).fetchall() == []
        # No ack done, nothing delivered: only the row saying when the message is due.
        [(no_id, no_receipt, due, _)] = c.execute(statements.statement("read"), {
            "queue": "fenced", "qty": 1, "vt": 30, "acks": [msg_id],
            "receipts": [first]}).fetchall()
        assert no_id is None and no_receipt is None and 20 < due <= 30
        [(_, read_ct, hidden, _)] = _messages(db_url, "fenced")
        assert read_ct == 2 and hidden > 20  # still the second consumer's, untouched
        assert sql_value(db_url, "SELECT count(*) FROM swf.dead_letters") == 0
        # The current receipt, or none (SQL callers), does change it.
        assert value(stale[0], second) == 1
        assert value(stale[0], None) == 1
        assert value(stale[4], second) == 1  # archived
    assert _messages(db_url, "fenced") == []


@pytest.mark.parametrize("storage", STORAGES)
def test_stale_holder_leaves_the_new_delivery_intact(connections: Any, broker_url: str,
                                                     storage: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="swf_celery.transport")
    a, b = connections(visibility_timeout=1), connections(visibility_timeout=30)
    q = _queue("fenced", storage)
    for i in range(5):
        publish(a, q, {"i": i})
    assert sql_value(broker_url, "SELECT storage FROM swf.queues WHERE name = 'fenced'") == (
        storage)
    chan_a, chan_b = a.channel(), b.channel()
    held_a = [chan_a.basic_get("fenced") for _ in range(5)]
    assert all(m is not None for m in held_a)
    # A stalls: nothing extends its deliveries any more, and they lapse.
    keeper = a.transport._keeper
    keeper.stop()
    keeper.join(5)
    held_b: list[Any] = []

    def b_reads() -> bool:
        message = chan_b.basic_get("fenced")
        if message is not None:
            held_b.append(message)
        return len(held_b) == 5

    wait_until(b_reads, what="B's deliveries after A's lapsed")
    assert {m.delivery_info["swf_receipt"] for m in held_a} == {1}
    assert {m.delivery_info["swf_receipt"] for m in held_b} == {2}

    # A, waking up, acks (written by its next read, or on their own), requeues,
    # dead-letters and extends what B holds now.
    held_a[0].ack()
    assert chan_a.read_rows("fenced", False, 10) == []
    held_a[1].ack()
    a.transport.flush_acks()
    held_a[2].reject(requeue=True)
    held_a[3].reject(requeue=False)
    assert keeper.tick(force=True) == 0  # held_a[4]: not extended

    rows = _messages(broker_url, "fenced")
    assert [row[1] for row in rows] == [2] * 5  # not deleted, not read again
    assert all(row[2] > 20 for row in rows)  # still hidden for B, not shortened
    assert sql_value(broker_url, "SELECT count(*) FROM swf.dead_letters") == 0
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert [m.split(" of ")[0] for m in ignored] == [
        "swf broker: ack", "swf broker: ack", "swf broker: requeue", "swf broker: reject"]

    for message in held_b:
        message.ack()
    b.transport.flush_acks()
    assert _messages(broker_url, "fenced") == []


def test_keeper_extends_on_after_its_connection_is_killed_and_after_a_crash_in_a_tick(
        connections: Any, broker_url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="swf_celery.transport")
    conn = connections(visibility_timeout=3)  # extended every second
    q = _queue("kept", "pgmq")
    publish(conn, q, {"long": "task"})
    message = conn.channel().basic_get("kept")
    assert message is not None
    transport = conn.transport
    keeper = transport._keeper

    def vt() -> float:
        return _messages(broker_url, "kept")[0][3]

    def extended_after(last: float) -> bool:
        return vt() > last + 0.5  # extended again (a second later)

    # A failing statement: the keeper's connection is terminated.
    wait_until(lambda: keeper._conn is not None, what="the keeper's first extension")
    killed = keeper._conn.info.backend_pid
    assert sql_value(broker_url, "SELECT pg_terminate_backend(%s)", (killed,)) is True
    before = vt()
    wait_until(lambda: extended_after(before), what="an extension after the kill")
    assert any("visibility extension failed" in r.getMessage() for r in caplog.records)
    assert keeper._conn.info.backend_pid != killed

    # Anything else going wrong in a tick (here: a channel's state changing under it).
    held = transport.held
    failures: list[int] = []

    def held_once_failing() -> Any:
        if not failures:
            failures.append(1)
            raise RuntimeError("dictionary changed size during iteration")
        return held()

    monkeypatch.setattr(transport, "held", held_once_failing)
    before = vt()
    wait_until(lambda: failures and extended_after(before), what="an extension after a crash")
    assert any("keeper tick failed" in r.getMessage() for r in caplog.records)
    assert keeper.is_alive() and transport._keeper is keeper

    assert _messages(broker_url, "kept")[0][1] == 1  # never delivered again meanwhile
    message.ack()


def test_a_reject_the_database_did_not_take_lets_the_message_run_again(
        connections: Any, broker_url: str) -> None:
    # The worker's connection is cut (a server restart) as a task rejects its message with
    # requeue: the reject fails. The message must not stay held (the keeper would extend it
    # for as long as the worker lives, and it would never run again): it reappears after
    # its visibility timeout and another consumer gets it.
    a, b = connections(visibility_timeout=2), connections(visibility_timeout=30)
    q = _queue("cut", "pgmq")
    publish(a, q, {"n": 1})
    chan_a = a.channel()
    message = chan_a.basic_get("cut")
    assert message is not None
    pid = a.transport.pg_connection().info.backend_pid
    sql(broker_url, "SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        message.reject(requeue=True)
    assert chan_a.held() == []
    a.transport._keeper.tick(force=True)  # extends nothing: the message is not held
    chan_b = b.channel()
    wait_until(lambda: chan_b.basic_get("cut") is not None, 10,
               "the message delivered again after its visibility timeout")


def test_a_close_the_database_does_not_take_dumps_nothing_and_loses_nothing(
        connections: Any, broker_url: str, caplog: Any, tmp_path: Any,
        monkeypatch: Any) -> None:
    # A worker stops while the server restarts: giving its unacked messages back fails.
    # kombu would log "UNABLE TO RESTORE" and dump the message bodies into a temporary
    # file; the messages are rows of their queue, and reappear after the visibility timeout.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    a, b = connections(visibility_timeout=2), connections(visibility_timeout=30)
    q = _queue("closing", "pgmq")
    publish(a, q, {"n": 1})
    chan_a = a.channel()
    assert chan_a.basic_get("closing") is not None
    pid = a.transport.pg_connection().info.backend_pid
    sql(broker_url, "SELECT pg_terminate_backend(%s)", (pid,))
    with caplog.at_level(logging.INFO):
        chan_a.close()
    assert "UNABLE TO RESTORE" not in caplog.text
    assert "not given back at close" in caplog.text
    assert list(tmp_path.iterdir()) == []
    chan_b = b.channel()
    wait_until(lambda: chan_b.basic_get("closing") is not None, 10,
               "the message delivered again after its visibility timeout")
