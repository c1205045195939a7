"""A message wakes one consumer, not every listener of its queue: the consumers asleep on it
(``swf.queue_sleep``) whose LISTEN session still runs take turns, each woken on its own
channel. A consumer killed while asleep, or woken for a queue it cannot read, never keeps a
message from another consumer that is free. Whether a sleeper's session runs is answered by
the lock its session holds (``swf._sleeper_alive``), or, for a consumer of an older release
that holds none, by the server's backend status: both kinds are tested."""

from __future__ import annotations

import os
import signal
from typing import Any

import psycopg
import pytest
from celery import Celery
from psycopg.types.json import Jsonb

from swf_celery.transport.wakeup import Wakeup
from tests.helpers import kombu_message, pg_url, sql, task_runs, wait_until, worker_process

APP = "tests.transport.broker_app"
#: A sleeper as this release's consumers are (its session holds the sleeper lock), and as
#: those of release 23 and older are (no lock).
KINDS = pytest.mark.parametrize("holds_lock", [True, False], ids=["locked", "older-release"])


def _send(url: str, queue: str, tag: str) -> None:
    sql(url, "SELECT swf.queue_send(%s, %s)", (queue, Jsonb(kombu_message(tag))))


def _drain(url: str, queue: str) -> None:
    sql(url, "SELECT swf.queue_purge(%s)", (queue,))


@KINDS
def test_each_message_wakes_one_sleeper_in_turn(db_url: str, sleepers: Any,
                                                holds_lock: bool) -> None:
    pgmq = sql(db_url, "SELECT pgmq_name FROM swf.queue_ensure('jobs')")[0][0]
    woken = f"swfq_{pgmq}"
    a = sleepers("swfw_00000000000000aa", holds_lock=holds_lock)
    b = sleepers("swfw_00000000000000bb", holds_lock=holds_lock)
    assert a.sleep_on("jobs") is None and b.sleep_on("jobs") is None
    # One message, one wake-up; the woken consumer stays asleep, at the back of the line.
    for expected in (a, b, a):
        _send(db_url, "jobs", "m")
        assert expected.woken() == [woken]
        assert (b if expected is a else a).woken() == []
    with psycopg.connect(db_url, autocommit=True) as conn, conn.transaction():
        for tag in ("4", "5"):  # one transaction, two messages: two consumers woken
            conn.execute("SELECT swf.queue_send('jobs', %s)", (Jsonb(kombu_message(tag)),))
    assert b.woken() == [woken] and a.woken() == [woken]
    # A consumer whose window is full stops sleeping: the others are woken, then nobody.
    sql(db_url, "SELECT swf.queue_wake_up(ARRAY['jobs'], %s)", (a.channel,))
    _send(db_url, "jobs", "6")
    assert b.woken() == [woken] and a.woken() == []
    sql(db_url, "SELECT swf.queue_wake_up(ARRAY['jobs'], %s)", (b.channel,))
    _send(db_url, "jobs", "7")  # nobody asleep: no NOTIFY at all
    assert a.woken() == [] and b.woken() == []


@KINDS
def test_a_sleeper_whose_session_ended_is_skipped_and_forgotten(db_url: str, sleepers: Any,
                                                                holds_lock: bool) -> None:
    sql(db_url, "SELECT swf.queue_ensure('jobs')")
    gone = sleepers("swfw_00000000000000cc", holds_lock=holds_lock)
    alive = sleepers("swfw_00000000000000dd", holds_lock=holds_lock)
    gone.sleep_on("jobs")
    alive.sleep_on("jobs")
    pid = gone.conn.info.backend_pid
    gone.conn.close()  # a killed worker: its LISTEN session ends, its row stays
    wait_until(lambda: not sql(db_url, "SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                               (pid,)), 10, "the session ended")
    _send(db_url, "jobs", "1")
    assert len(alive.woken()) == 1
    assert sql(db_url, "SELECT channel FROM swf.queue_sleepers") == [(alive.channel,)]


def _alive(url: str, pid: int) -> bool:
    return bool(sql(url, "SELECT swf._sleeper_alive(%s)", (pid,))[0][0])


def _holds_sleeper_lock(url: str, pid: int) -> bool:
    return bool(sql(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                         "AND classid = swf._sleeper_lock_space() AND objid = %s "
                         "AND objsubid = 2 AND pid = %s AND mode = 'ExclusiveLock' "
                         "AND granted", (pid, pid))[0][0])


def test_a_consumers_listen_session_holds_the_lock_that_says_it_lives(db_url: str) -> None:
    wakeup = Wakeup(db_url)
    sleeper = wakeup.sleeper()
    assert sleeper is not None
    pid = sleeper[1]
    try:
        assert _holds_sleeper_lock(db_url, pid)
        assert _alive(db_url, pid)
        # The check leaves no lock behind in the checking session (the locks of this
        # database only: workers of tests running beside this one hold their own).
        assert not sql(db_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                               "AND classid = swf._sleeper_lock_space() AND pid <> %s "
                               "AND database = (SELECT oid FROM pg_database "
                               "                 WHERE datname = current_database())",
                       (pid,))[0][0]
    finally:
        wakeup.close()
    wait_until(lambda: not sql(db_url, "SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                               (pid,)), 10, "the session ended")
    assert not _alive(db_url, pid)


def test_a_session_without_the_lock_is_alive_while_it_runs(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as older:  # a consumer of release 23
        pid = older.info.backend_pid
        assert not _holds_sleeper_lock(db_url, pid) and _alive(db_url, pid)
    wait_until(lambda: not sql(db_url, "SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                               (pid,)), 10, "the session ended")
    assert not _alive(db_url, pid)


def test_a_wake_up_passed_on_reaches_the_next_sleeper(db_url: str, sleepers: Any) -> None:
    pgmq = sql(db_url, "SELECT pgmq_name FROM swf.queue_ensure('jobs')")[0][0]
    a, b = sleepers("swfw_0000000000000001"), sleepers("swfw_0000000000000002")
    a.sleep_on("jobs")
    b.sleep_on("jobs")
    _send(db_url, "jobs", "1")
    assert a.woken() == [f"swfq_{pgmq}"]
    # a cannot read it: it stops sleeping and b is woken (then b again: a is out of line).
    sql(db_url, "SELECT swf.queue_pass_wake(%s, %s)", (f"swfq_{pgmq}", a.channel))
    assert b.woken() == [f"swfq_{pgmq}"]
    _send(db_url, "jobs", "2")
    assert b.woken() == [f"swfq_{pgmq}"] and a.woken() == []
    sql(db_url, "SELECT swf.queue_pass_wake('swfq_no_such_queue', %s)", (b.channel,))


def test_a_sleeper_whose_pid_is_no_session_here_is_marked_instead(db_url: str) -> None:
    # A LISTEN through a pooler in session mode reports the pooler's key, not the server's
    # pid: such a sleeper would be skipped by every wake-up. It marks the queue instead and
    # is woken, with every listener, on the queue's channel.
    pgmq = sql(db_url, "SELECT pgmq_name FROM swf.queue_ensure('jobs')")[0][0]
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f'LISTEN "swfq_{pgmq}"')
        sql(db_url, "SELECT swf.queue_sleep(ARRAY['jobs'], 'swfw_00000000000000ee', 1)")
        assert sql(db_url, "SELECT count(*) FROM swf.queue_sleepers")[0][0] == 0
        _send(db_url, "jobs", "1")
        assert [n.channel for n in listener.notifies(timeout=0.5)] == [f"swfq_{pgmq}"]


@pytest.mark.parametrize("channel", ["swfq_jobs", "swfw_x\"; DROP TABLE swf.queues; --",
                                     "swfw_0123456789ABCDEF", "", None])
def test_a_channel_that_is_not_a_consumers_own_is_refused(db_url: str,
                                                          channel: str | None) -> None:
    sql(db_url, "SELECT swf.queue_ensure('jobs')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="wake-up channel"):
        sql(db_url, "SELECT swf.queue_sleep(ARRAY['jobs'], %s, pg_backend_pid())", (channel,))


def _asleep_on_celery(url: str) -> int:
    """Consumers asleep on the queue ``celery`` (a worker also sleeps on its control queue)."""
    return int(sql(url, "SELECT count(DISTINCT channel) FROM swf.queue_sleepers s "
                        "JOIN swf.queues q ON q.id = s.queue_id WHERE q.name = 'celery'")[0][0])


@pytest.mark.slow
def test_a_worker_killed_asleep_keeps_no_task_from_the_worker_left(broker: str,
                                                                   client: Celery) -> None:
    # The first worker falls asleep first: a message would wake it before the second. It
    # is killed (SIGKILL, its whole process group); the next task must still run at once
    # on the second worker, by its wake-up, not by a sweep (60 s) or a poll (60 s).
    env = {"SWF_TEST_BROKER": broker, "SWF_TEST_POLL": "60", "SWF_TEST_SWEEP": "60"}
    url = pg_url(broker)

    def asleep() -> int:
        return _asleep_on_celery(url)

    with worker_process(APP, env=env, concurrency=1, hostname="first@wake") as first:
        wait_until(lambda: asleep() == 1, 30, "the first worker asleep", proc=first)
        with worker_process(APP, env=env, concurrency=1, hostname="second@wake") as second:
            wait_until(lambda: asleep() == 2, 30, "the second worker asleep", proc=second)
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
            client.send_task("record", args=["after-kill"])
            wait_until(lambda: task_runs(url, "after-kill"), 10,
                       "the task ran on the worker left", proc=second)


@pytest.mark.slow
def test_a_busy_worker_keeps_no_task_from_an_idle_one(
        broker: str, client: Celery) -> None:
    # A worker whose prefetch window is full (one slot, a long task) must not be the one a
    # message wakes: the idle worker runs the next task at once (the sweep and the poll are
    # 60 s). The read that filled the busy worker's window ended its sleep.
    env = {"SWF_TEST_BROKER": broker, "SWF_TEST_POLL": "60", "SWF_TEST_SWEEP": "60"}
    url = pg_url(broker)
    with worker_process(APP, env=env, concurrency=1, hostname="busy@wake") as busy:
        wait_until(lambda: _asleep_on_celery(url) == 1, 30, "busy asleep", proc=busy)
        client.send_task("slow", args=["long", 60])
        wait_until(lambda: task_runs(url, "long"), 10, "the long task started", proc=busy)
        with worker_process(APP, env=env, concurrency=1, hostname="idle@wake") as idle:
            wait_until(lambda: _asleep_on_celery(url) == 1, 30, "the idle worker asleep",
                       proc=idle)
            client.send_task("record", args=["quick"])
            wait_until(lambda: task_runs(url, "quick"), 10, "the quick task ran at once",
                       proc=idle)
        busy.send_signal(signal.SIGKILL)  # the long task is not waited for
