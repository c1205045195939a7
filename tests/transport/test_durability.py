"""Revokes and dead letters commit durably; the broker's ordinary writes stay asynchronous.

The broker's connection runs with ``synchronous_commit=off`` (a lost read or ack only means a
redelivery). Recording a revoke and dead-lettering a message (with the failed workflow
attempt the engine's trigger writes in the same transaction) set it on for their own
transaction, so they survive a crash of the server.

Two checks, each able to fail: a deferred trigger reads the setting in force when each
transaction commits, and a server of the test's own is killed right after a revoke or a dead
letter, with its WAL writer stopped so that an asynchronous commit made after it, just before
the kill, is lost for sure (as it is for up to three ``wal_writer_delay`` in a real crash):
after the restart the revoke or the dead letter is there, the later publish is not.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue
from psycopg import sql as pgsql

import swf_celery  # noqa: F401 - registers swf://
from swf_celery.ops import migrate
from tests.conftest import PrivateServer
from tests.helpers import (
    commit_settings,
    drain,
    free_port,
    probe_commits,
    publish,
    run_cli,
    sql,
    swf_url,
)


def test_revoke_and_dead_letter_commit_synchronously_publish_read_ack_do_not(
        db_url: str, connections: Any) -> None:
    conn = connections()
    jobs = Queue("jobs", Exchange("jobs"), "jobs")
    jobs(conn.channel()).declare()
    table = "q_" + sql(db_url, "SELECT pgmq_name FROM swf.queues WHERE name = 'jobs'")[0][0]
    probe_commits(db_url, "swf.revoked_tasks", "swf.dead_letters", "pgmq." + table)
    publish(conn, jobs, {"n": 1})
    publish(conn, jobs, {"n": 2})
    first, second = (m for _, m in drain(conn, jobs, expect=2, ack=False))
    first.ack()
    second.reject(requeue=False)
    conn.transport.flush_acks()
    app = Celery("client", broker=swf_url(db_url), set_as_current=False)
    try:
        app.control.revoke("t-durable")
    finally:
        app.close()

    assert commit_settings(db_url) == {
        (table, "INSERT", "off"),  # publish
        (table, "UPDATE", "off"),  # read
        (table, "DELETE", "off"),  # ack
        (table, "DELETE", "on"),  # the dead letter's removal from its queue
        ("dead_letters", "INSERT", "on"),
        ("revoked_tasks", "INSERT", "on"),
    }
    # A SQL caller's own session setting does not matter either.
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("SET synchronous_commit = off")
        c.execute("SELECT swf.task_revoke(ARRAY['t-durable'])")  # updates revoked_at
        assert c.execute("SHOW synchronous_commit").fetchone() == ("off",)
    assert ("revoked_tasks", "UPDATE", "on") in commit_settings(db_url)
    assert ("revoked_tasks", "UPDATE", "off") not in commit_settings(db_url)


# -- a crash ------------------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[PrivateServer]:
    """A migrated embedded server of this test alone (it is killed), without autovacuum
    (whose commits are synchronous: they would flush the test's asynchronous ones)."""
    home = tempfile.mkdtemp(prefix="swf-crash-pg-")
    server = PrivateServer(home, free_port())
    try:
        server.start()
        migrate.migrate(server.url)
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET autovacuum = off")
            conn.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        try:
            server.remove()
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z")


def _kill_server(server: PrivateServer) -> None:
    """SIGKILL the postmaster and every process of the server at once: a crash."""
    proc = run_cli("db", "status", "--json", env=server.env)
    postmaster = int(json.loads(proc.stdout)["pid"])
    pids = [postmaster, *_children(postmaster)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: not any(_alive(pid) for pid in pids), "the server's death")


def _freeze_wal_writers(url: str) -> list[int]:
    """Stop (SIGSTOP) the processes that would write an asynchronous commit's WAL on their
    own (the WAL writer; the background writer and checkpointer, which flush WAL before
    writing a page; the autovacuum launcher), once no autovacuum worker runs: from now on
    only a synchronous commit, which flushes its own WAL, reaches the disk (and a test
    commits nothing else synchronously). Each is stopped only while it waits in its main
    loop (wait event type Activity), never while it holds a lock a commit needs (the WAL
    writer inside a flush holds WALWriteLock). Returns their pids."""
    frozen: list[int] = []
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type IN "
            "('walwriter', 'background writer', 'checkpointer', 'autovacuum launcher')")]
        assert len(pids) >= 3
        _wait_for(lambda: conn.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                       "backend_type = 'autovacuum worker'").fetchone() == (0,),
                  "autovacuum off")
        try:
            for pid in pids:
                for _ in range(500):
                    os.kill(pid, signal.SIGSTOP)
                    frozen.append(pid)
                    _wait_for(lambda pid=pid: _state(pid) == "T")
                    waiting = conn.execute("SELECT wait_event_type FROM pg_stat_activity "
                                           "WHERE pid = %s", (pid,)).fetchone()
                    if waiting == ("Activity",):
                        break
                    _resume([frozen.pop()])
                    time.sleep(0.002)
                else:
                    raise AssertionError(f"process {pid} never waited in its main loop")
        except BaseException:
            _resume(frozen)
            raise
    return frozen


def _resume(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _wait_for(condition: Callable[[], bool], what: str = "process state") -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached"
        time.sleep(0.002)


@pytest.mark.parametrize("write", ["revoke", "dead letter"])
def test_revoke_and_dead_letter_survive_a_server_crash(own_server: PrivateServer,
                                                       write: str) -> None:
    url = own_server.url
    jobs = Queue("jobs", Exchange("jobs"), "jobs")
    conn = Connection(swf_url(url), transport_options={"visibility_timeout": 30})
    app = Celery("client", broker=swf_url(url), set_as_current=False)
    frozen: list[int] = []
    try:
        publish(conn, jobs, {"n": "doomed"})
        # Each alone: a synchronous commit also flushes every commit before it.
        if write == "revoke":
            frozen = _freeze_wal_writers(url)
            app.control.revoke("t-crash")
        else:
            [(_, held)] = drain(conn, jobs, expect=1, ack=False)
            frozen = _freeze_wal_writers(url)
            held.reject(requeue=False)
        publish(conn, jobs, {"n": "late"})  # asynchronous: only in WAL buffers
        assert _late(url) == 1
        _kill_server(own_server)
        frozen = []
    finally:
        _resume(frozen)  # the test failed: the server must be able to stop
        app.close()
        conn.release()
    own_server.start()  # crash recovery
    revoked = sql(url, "SELECT task_id FROM swf.revoked_tasks")
    dead = sql(url, "SELECT reason, convert_from(decode(message->>'body', 'base64'), 'UTF8') "
                    "FROM swf.dead_letters")
    if write == "revoke":
        assert revoked == [("t-crash",)]
    else:
        assert dead == [("rejected", '{"n": "doomed"}')]
    # The control: the crash lost what was committed asynchronously after it.
    assert _late(url) == 0


def _late(url: str) -> int:
    """How many messages ``{"n": "late"}`` queue "jobs" holds."""
    pgmq_name = sql(url, "SELECT pgmq_name FROM swf.queues WHERE name = 'jobs'")[0][0]
    body = base64.b64encode(json.dumps({"n": "late"}).encode()).decode()
    query = pgsql.SQL("SELECT count(*) FROM {} WHERE message->>'body' = %s").format(
        pgsql.Identifier("pgmq", "q_" + pgmq_name))
    return int(sql(url, query, (body,))[0][0])
