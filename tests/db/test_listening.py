"""The one LISTEN plumbing (swf_celery/db/listening.py) with real LISTEN/NOTIFY: the LISTEN
set and its statements, gaps (a lost connection, a listen while the server is away, NOTIFYs
the database skipped), the descriptor for event loops, asyncio, and forked children."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import select
from typing import Any

import psycopg
import pytest

from swf_celery import db
from swf_celery.db import notifications
from swf_celery.db.listening import GAP_RECONNECT, GAP_SKIPPED, ListenConnection, Received
from swf_celery.db.notifications import WARN_EVERY, notification_health
from tests.helpers import sql, wait_until

WAIT = 10.0  # generous upper bound for a delivery; not a timing assertion


def _notify(url: str, channel: str, payload: str = "") -> None:
    sql(url, "SELECT pg_notify(%s, %s)", (channel, payload))


def _next(listener: ListenConnection) -> Received:
    item = listener.get(WAIT)
    assert item is not None, "nothing arrived"
    return item


def test_listen_and_unlisten_return_once_the_server_has_them(db_url: str) -> None:
    with ListenConnection(db_url, ["swft_a"]) as listener:
        # The LISTEN and a statement in one call: the rows come back once both are done.
        assert listener.listen(["swft_b"], query="SELECT 42") == [(42,)]
        assert listener.channels == {"swft_a", "swft_b"}
        _notify(db_url, "swft_b", "to b")
        item = _next(listener)
        assert (item.channel, item.payload, item.gap) == ("swft_b", "to b", None)
        assert item.sender_pid > 0

        listener.unlisten(["swft_a"])
        _notify(db_url, "swft_a", "not heard")
        _notify(db_url, "swft_b", "heard")
        assert _next(listener).payload == "heard"
        assert listener.execute("SELECT 1 + 1") == [(2,)]
        assert listener.received == 2


def test_a_lost_connection_comes_back_with_its_listens_and_a_gap(db_url: str) -> None:
    with ListenConnection(db_url, ["swft_back"], max_backoff=0.5) as listener:
        pid = listener.backend_pid
        sql(db_url, "SELECT pg_terminate_backend(%s)", (pid,))
        gap = _next(listener)
        assert gap.gap == GAP_RECONNECT and listener.reconnects == 1
        assert listener.possible_gap.is_set() and listener.connected.is_set()
        assert listener.backend_pid not in (None, pid)
        _notify(db_url, "swft_back", "again")
        assert _next(listener).payload == "again"


def test_a_listen_while_the_server_is_away_is_made_on_return_with_a_gap(
        private_server: Any) -> None:
    url = private_server.url
    with ListenConnection(url, ["swft_first"], max_backoff=0.2) as listener:
        private_server.stop()
        try:
            wait_until(lambda: not listener.connected.is_set(), WAIT, "the drop noticed")
            # Nothing to wait for: the reconnect makes the LISTEN, and reports a gap.
            assert listener.listen(["swft_later"], query="SELECT 1") is None
        finally:
            private_server.start()
        assert _next(listener).gap == GAP_RECONNECT
        _notify(url, "swft_later", "made")
        assert _next(listener).payload == "made"


def test_notifies_the_database_skipped_are_reported_as_a_gap(db_url: str) -> None:
    with ListenConnection(db_url, ["swft_skips"], skip_check=0.05) as listener:
        # What swf.notify_hint does when it skips a NOTIFY: count it.
        sql(db_url, "SELECT nextval('swf.notify_skips')")
        gap = _next(listener)
        assert gap.gap == GAP_SKIPPED and listener.possible_gap.is_set()
        assert listener.reconnects == 0


def test_the_descriptor_is_readable_while_notifications_wait(db_url: str) -> None:
    with ListenConnection(db_url, ["swft_fd"]) as listener:
        fd = listener.fileno()
        assert select.select([fd], [], [], 0)[0] == []
        _notify(db_url, "swft_fd", "1")
        _notify(db_url, "swft_fd", "2")
        assert select.select([fd], [], [], WAIT)[0] == [fd]
        wait_until(lambda: listener.received == 2, WAIT, "both read")
        assert [i.payload for i in listener.take()] == ["1", "2"]
        assert select.select([fd], [], [], 0)[0] == []
        assert listener.take() == []


def test_aget_waits_without_blocking_the_loop_and_ends_on_close(db_url: str) -> None:
    async def main() -> list[str | None]:
        listener = ListenConnection(db_url, ["swft_async"])
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(listener.aget())
        await asyncio.sleep(0.01)
        await loop.run_in_executor(None, _notify, db_url, "swft_async", "hello")
        first = await asyncio.wait_for(waiting, WAIT)
        ending = asyncio.create_task(listener.aget())
        await asyncio.sleep(0.01)
        await loop.run_in_executor(None, listener.close)
        return [first.payload if first else None, await asyncio.wait_for(ending, WAIT)]

    assert asyncio.run(main()) == ["hello", None]


def _child(listener: ListenConnection, conn: Any) -> None:
    listener.close()  # the parent's listener: a no-op here
    conn.send((listener.closed, listener.get(0), listener.take()))


def test_a_forked_child_never_closes_its_parents_listener(db_url: str) -> None:
    with ListenConnection(db_url, ["swft_fork"]) as listener:
        pid = listener.backend_pid
        parent, child = multiprocessing.get_context("fork").Pipe()
        proc = multiprocessing.get_context("fork").Process(target=_child,
                                                           args=(listener, child))
        proc.start()
        assert parent.poll(WAIT) and parent.recv() == (True, None, [])
        proc.join(WAIT)
        _notify(db_url, "swft_fork", "still here")
        assert _next(listener).payload == "still here"
        assert listener.backend_pid == pid and listener.reconnects == 0


def test_notification_health_names_a_session_idle_in_a_transaction(db_url: str) -> None:
    with psycopg.connect(db_url) as idle, psycopg.connect(db_url, autocommit=True) as conn:
        idle.execute("LISTEN swft_idle")
        idle.commit()
        idle.execute("SELECT 1")
        health = notification_health(conn, stalled_after=0)
        assert not health.skipping and health.limit == 0.5 and health.skipped >= 0
        suspect = next(s for s in health.suspects if s.pid == idle.info.backend_pid)
        assert suspect.state == "idle in transaction" and suspect.seconds >= 0
        assert idle.info.backend_pid not in {
            s.pid for s in notification_health(conn, stalled_after=3600).suspects}


def test_skip_notices_are_logged_at_most_once_a_while(
        db_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # The NOTICE swf.notify_hint sends when it skips (the whole path runs in
    # tests/db/test_notification_queue.py, on a server whose queue can be filled).
    notice = ("DO $$ BEGIN RAISE NOTICE USING ERRCODE = '01SWF', "
              "MESSAGE = 'swf: NOTIFY swft skipped: the notification queue is 51.0% full'; "
              "END $$")
    other = "DO $$ BEGIN RAISE NOTICE 'an ordinary notice'; END $$"
    caplog.set_level(logging.WARNING, logger="swf_celery.db.notifications")
    monkeypatch.setattr(notifications._warn_skip, "_last", float("-inf"))  # none logged yet
    assert WARN_EVERY >= 10
    with db.resolve(db_url).connection() as conn:
        conn.execute(other)
        conn.execute(notice)
        conn.execute(notice)
    with db.open_connection(db_url, "broker") as conn:
        conn.execute(notice)
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "swf_celery.db.notifications"]
    assert len(warnings) == 1  # the pool's and a dedicated connection's: one a minute
    assert "NOTIFY swft skipped" in warnings[0] and "1 skipped" in warnings[0]
