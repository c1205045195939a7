"""Reaping and queue DDL never wait on a pg_dump: short lock_timeout, retried later."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from kombu import Exchange, Queue
from psycopg import sql as pgsql

import swf_celery  # noqa: F401 - registers swf://
from swf_celery.transport.visibility import VisibilityKeeper
from tests.helpers import pg_url, publish, sql, sql_value


def held_vt(url: str, queue: str) -> Any:
    """The visibility deadline of the one message of durable queue ``queue``."""
    table = str(sql_value(url, "SELECT 'q_' || pgmq_name FROM swf.queues WHERE name = %s",
                          (queue,)))
    return sql_value(url, pgsql.SQL("SELECT vt FROM {}").format(
        pgsql.Identifier("pgmq", table)))


def legacy_expiring_queue(conn: Any, url: str, name: str) -> str:
    """A pgmq queue marked as expired long ago (declared with x-expires before transient
    queues existed); returns its table name."""
    publish(conn, Queue(name, Exchange(name), name), {"old": 1})
    sql(url, "UPDATE swf.queues SET expires_ms = 1000, last_active = now() - interval '1 day' "
             "WHERE name = %s", (name,))
    return str(sql_value(url, "SELECT 'q_' || pgmq_name FROM swf.queues WHERE name = %s",
                         (name,)))


def dump_lock(url: str, table: str) -> psycopg.Connection[Any]:
    """A transaction holding ACCESS SHARE on ``table``, as pg_dump does on every table."""
    dump = psycopg.connect(pg_url(url))
    dump.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    dump.execute(pgsql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
        pgsql.Identifier("pgmq", table)))
    return dump


def test_keeper_extends_and_reaps_without_waiting_for_a_dump(connections: Any,
                                                             broker_url: str) -> None:
    conn = connections()
    table = legacy_expiring_queue(conn, broker_url, "legacy.events")
    work = Queue("work", Exchange("work"), "work")
    publish(conn, work, {"job": 1})
    held = work(conn.channel()).get(no_ack=False)
    assert held is not None
    vt_before = held_vt(broker_url, "work")
    dump = dump_lock(broker_url, table)
    try:
        keeper = VisibilityKeeper(conn.transport, 60, 20)
        assert keeper.tick(force=True) == 1  # the held message is extended first
        vt_after = held_vt(broker_url, "work")
        assert vt_after > vt_before

        # Reaping the locked table gives up at once; a revoke's all-queue DELETE running
        # meanwhile is not queued behind a DROP waiting for the dump.
        errors: list[BaseException] = []

        def revoke() -> None:
            try:
                with psycopg.connect(pg_url(broker_url), autocommit=True) as other:
                    other.execute("SET statement_timeout = '10s'")
                    other.execute("SELECT swf.queue_remove_tasks(ARRAY['some-task'])")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        results: list[int] = []
        reaper = threading.Thread(target=lambda: results.append(keeper.reap()))
        reaper.start()
        revoker = threading.Thread(target=revoke)
        revoker.start()
        reaper.join(30)
        revoker.join(30)
        assert errors == [] and results == [0]
        assert sql(broker_url, "SELECT 1 FROM swf.queues WHERE name = 'legacy.events'") == [(1,)]

        # An explicit delete of the locked queue retries, then reports the busy lock; the
        # queue is left as it was.
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.channel().queue_delete("legacy.events")
        assert sql_value(broker_url, "SELECT swf.queue_size('legacy.events')") == 1
    finally:
        dump.rollback()
        dump.close()
    # The next pass, the dump over, drops it.
    assert VisibilityKeeper(conn.transport, 60, 20).reap() == 1
    assert sql_value(broker_url, "SELECT to_regclass(%s)", ("pgmq." + table,)) is None
    held.ack()
