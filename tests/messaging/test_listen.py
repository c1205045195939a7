"""Listeners with real LISTEN/NOTIFY: threads, callbacks, asyncio, restarts, cleanup."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest

import swf_celery
from swf_celery.errors import DatabaseUnavailable
from swf_celery.messaging.listen import APPLICATION_NAME, Listener, Notification
from tests.helpers import connections_named, wait_until

WAIT = 10.0  # generous upper bound for a delivery; not a timing assertion


def _next(listener: Listener) -> Notification:
    note = listener.get(WAIT)
    assert note is not None, "no notification arrived"
    return note


def test_iterable_listener_gets_message_ids_in_order(db_url: str) -> None:
    with swf_celery.listen("orders", db_url) as listener:
        ids = [swf_celery.send_with_notify("orders", {"i": i}, db_url) for i in range(20)]
        got = []
        for note in listener:
            assert note.kind == "message" and note.channel == "orders" and note.payload is None
            # Same transaction: the message is readable when its notification arrives.
            assert swf_celery.get_message("orders", note.message_id, db_url) is not None
            got.append(note.message_id)
            if len(got) == len(ids):
                break
    assert got == ids


def test_notify_only_payload_arrives_intact_up_to_the_limit(db_url: str) -> None:
    big = "é" * 3999 + "x"  # 7999 bytes
    with swf_celery.listen("alerts", db_url) as listener:
        swf_celery.notify_only("alerts", {"level": "high"}, db_url)
        swf_celery.notify_only("alerts", big, db_url)
        first, second = _next(listener), _next(listener)
    assert first.kind == "notify" and first.json() == {"level": "high"}
    assert first.message_id is None
    assert second.payload == big


def test_other_channels_are_not_delivered(db_url: str) -> None:
    with swf_celery.listen("mine", db_url) as listener:
        swf_celery.notify_only("other", "not for you", db_url)
        swf_celery.notify_only("mine", "for you", db_url)
        assert _next(listener).payload == "for you"


def test_callback_form_and_several_listeners(db_url: str) -> None:
    received: list[Notification] = []
    done = threading.Event()

    def on_note(note: Notification) -> None:
        received.append(note)
        if len(received) == 3:
            done.set()

    cb = swf_celery.listen("fan", db_url, callback=on_note)
    second = swf_celery.listen("fan", db_url)
    try:
        ids = [swf_celery.send_with_notify("fan", i, db_url) for i in range(3)]
        assert done.wait(WAIT)
        assert [n.message_id for n in received] == ids
        assert [_next(second).message_id for _ in ids] == ids
    finally:
        swf_celery.unlisten(cb, db_url)
        swf_celery.unlisten(second, db_url)


def test_callback_that_raises_does_not_stop_the_listener(db_url: str) -> None:
    seen: list[str] = []
    done = threading.Event()

    def flaky(note: Notification) -> None:
        seen.append(note.payload or "")
        if note.payload == "boom":
            raise RuntimeError("callback bug")
        done.set()

    listener = swf_celery.listen("flaky", db_url, callback=flaky)
    try:
        swf_celery.notify_only("flaky", "boom", db_url)
        swf_celery.notify_only("flaky", "after", db_url)
        assert done.wait(WAIT)
        assert seen == ["boom", "after"]
    finally:
        swf_celery.unlisten(listener, db_url)


def test_callback_may_unlisten_its_own_listener(db_url: str) -> None:
    stopped = threading.Event()
    holder: list[Listener] = []

    def stop_on_first(note: Notification) -> None:
        swf_celery.unlisten(holder[0], db_url)
        stopped.set()

    holder.append(swf_celery.listen("self_stop", db_url, callback=stop_on_first))
    swf_celery.notify_only("self_stop", "stop", db_url)
    assert stopped.wait(WAIT)
    holder[0]._thread.join(WAIT)
    assert holder[0].closed and not holder[0]._thread.is_alive()


def test_workflow_events_arrive_through_listen(db_url: str) -> None:
    event = '{"run_id": "6f1c", "step": "train", "status": "completed"}'
    with swf_celery.listen("swf:workflow_events", db_url) as listener:  # the former name
        assert listener.notify_channel == "swf_workflow_events"
        with psycopg.connect(db_url, autocommit=True) as conn:
            # A bare NOTIFY on the events channel (the engine's own carry a message id).
            conn.execute("SELECT pg_notify('swf_workflow_events', %s)", (event,))
        note = _next(listener)
    assert note.kind == "notify" and note.message_id is None
    assert note.json() == {"run_id": "6f1c", "step": "train", "status": "completed"}


def _listener_connections(db_url: str) -> int:
    return connections_named(db_url, APPLICATION_NAME)


def test_unlisten_stops_iteration_and_frees_the_connection(db_url: str) -> None:
    listener = swf_celery.listen("closing", db_url)
    assert _listener_connections(db_url) == 1
    ended = threading.Event()

    def consume() -> None:
        for _ in listener:
            pass
        ended.set()

    thread = threading.Thread(target=consume)
    thread.start()
    swf_celery.unlisten(listener, db_url)
    assert ended.wait(WAIT) and listener.closed
    thread.join()
    # The backend exits just after the client closes.
    wait_until(lambda: _listener_connections(db_url) == 0, WAIT, "listener connection closed")
    assert _listener_connections(db_url) == 0
    swf_celery.unlisten(listener, db_url)  # idempotent
    with pytest.raises(TypeError, match="Listener"):
        swf_celery.unlisten("closing", db_url)  # type: ignore[arg-type]


def test_full_buffer_drops_and_reports_a_gap(db_url: str) -> None:
    with swf_celery.listen("burst", db_url, buffer=2) as listener:
        for i in range(5):
            swf_celery.notify_only("burst", str(i), db_url)
        wait_until(lambda: listener.dropped >= 3, WAIT, "3 notifications dropped")
        assert listener.dropped == 3 and listener.possible_gap.is_set()
        assert [_next(listener).payload for _ in range(2)] == ["0", "1"]
        swf_celery.notify_only("burst", "5", db_url)
        assert _next(listener).is_gap
        assert _next(listener).payload == "5"


def test_a_callback_that_blocks_never_stops_the_reading(db_url: str) -> None:
    # The callback runs in a dispatch thread of its own: while it blocks, the reading thread
    # keeps taking every notification off the connection (so PostgreSQL can trim its queue
    # past this listener), and the buffer keeps the first ones, drops the rest and says so.
    release = threading.Event()
    seen: list[Notification] = []

    def stuck(note: Notification) -> None:
        seen.append(note)
        release.wait(60)

    total, buffer = 2000, 10
    listener = swf_celery.listen("stuck", db_url, callback=stuck, buffer=buffer)
    try:
        # 8 MB of notifications: more than the socket buffers hold, so a listener that
        # stopped reading would leave its server process blocked writing them to it.
        with psycopg.connect(db_url, autocommit=True) as conn:
            for start in range(0, total, 200):
                conn.execute("SELECT pg_notify('swf_stuck', i || ':' || repeat('x', 4000)) "
                             "FROM generate_series(%s::int, %s::int) AS i",
                             (start, start + 199))
        wait_until(lambda: listener.received == total, 60, "every notification read")
        assert len(seen) == 1 and (seen[0].payload or "").startswith("0:")
        assert listener.dropped >= total - 2 - buffer and listener.possible_gap.is_set()

        release.set()
        swf_celery.notify_only("stuck", "after", db_url)
        wait_until(lambda: seen[-1].payload == "after", WAIT, "the next notification")
        # In order; every notification dropped is announced by a gap before the next one.
        kept, previous, gap = 0, -1, False
        for note in seen[:-1]:
            if note.is_gap:
                gap = True
                continue
            number = int((note.payload or "").split(":")[0])
            assert number == previous + 1 or (number > previous and gap), (previous, number)
            kept, previous, gap = kept + 1, number, False
        assert gap or previous == total - 1  # the drops at the end: a gap before "after"
        assert kept + listener.dropped == total
    finally:
        release.set()
        swf_celery.unlisten(listener, db_url)


def test_listen_to_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot reach PostgreSQL"):
        swf_celery.listen("orders", "postgresql://postgres@127.0.0.1:1/none")


# -- asyncio ------------------------------------------------------------------------------


def test_async_for_receives_and_ends_on_close(db_url: str) -> None:
    async def main() -> tuple[list[int], bool]:
        listener = await swf_celery.alisten("async_orders", db_url)
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(None, lambda: [
            swf_celery.send_with_notify("async_orders", i, db_url) for i in range(5)])
        got: list[int] = []
        async for note in listener:
            got.append(note.message_id)
            if len(got) == 5:
                break

        # A consumer still waiting when the listener closes finishes its loop.
        async def drain() -> bool:
            async for _ in listener:
                pass
            return True

        task = asyncio.create_task(drain())
        await asyncio.sleep(0.05)
        await listener.aclose()
        finished = await asyncio.wait_for(task, WAIT)
        assert got == ids
        return got, finished

    got, finished = asyncio.run(main())
    assert len(got) == 5 and finished


def test_async_context_manager_with_plain_listen(db_url: str) -> None:
    async def main() -> str | None:
        async with swf_celery.listen("async_ctx", db_url) as listener:
            await asyncio.get_running_loop().run_in_executor(
                None, swf_celery.notify_only, "async_ctx", "ping", db_url)
            note = await asyncio.wait_for(listener.__anext__(), WAIT)
        assert listener.closed
        return note.payload

    assert asyncio.run(main()) == "ping"


# -- restarts -----------------------------------------------------------------------------


def test_listener_survives_restart_and_reports_the_gap(private_server) -> None:  # noqa: ANN001
    url = private_server.url
    before = swf_celery.send_with_notify("durable", {"n": 1}, url)  # creates the queue
    listener = swf_celery.listen("durable", url, max_backoff=0.5)
    try:
        first = swf_celery.send_with_notify("durable", {"n": 2}, url)
        assert _next(listener).message_id == first

        private_server.restart()  # drops every connection

        gap = listener.get(60)
        assert gap is not None and gap.is_gap, gap
        assert listener.reconnects == 1 and listener.possible_gap.is_set()
        assert listener.connected.is_set()
        # What a caller does on a gap: re-read history; nothing stored was lost.
        pending = [m.id for m in swf_celery.read_pending("durable", url)]
        assert pending == [before, first]

        after = swf_celery.send_with_notify("durable", {"n": 3}, url)
        assert _next(listener).message_id == after
    finally:
        swf_celery.unlisten(listener, url)



# -- sending inside the caller's transaction ----------------------------------------------


def test_send_on_callers_connection_commits_and_rolls_back_with_it(db_url: str) -> None:
    with swf_celery.listen("outbox", db_url) as listener, psycopg.connect(db_url) as conn:
        conn.execute("CREATE TABLE orders (id int)")
        conn.commit()

        conn.execute("INSERT INTO orders VALUES (1)")
        swf_celery.send_with_notify("outbox", {"order": 1}, conn)
        swf_celery.notify_only("outbox", "rolled back", conn)
        assert listener.get(0.3) is None  # nothing before COMMIT
        conn.rollback()
        assert swf_celery.read_pending("outbox", db_url) == []

        conn.execute("INSERT INTO orders VALUES (2)")
        message_id = swf_celery.send_with_notify("outbox", {"order": 2}, conn)
        swf_celery.notify_only("outbox", "committed", conn)
        conn.commit()
        note = _next(listener)
        assert (note.kind, note.message_id) == ("message", message_id)
        assert _next(listener).payload == "committed"
        assert listener.get(0.3) is None  # the rolled-back ones never arrive
    assert [m.body for m in swf_celery.read_pending("outbox", db_url)] == [{"order": 2}]


def test_async_listener_sees_the_gap_after_restart(private_server) -> None:  # noqa: ANN001
    url = private_server.url

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        kinds: list[str] = []
        async with await swf_celery.alisten("async_durable", url, max_backoff=0.5) as listener:
            await loop.run_in_executor(None, private_server.restart)
            async for note in listener:
                kinds.append(note.kind)
                if note.is_gap:
                    await loop.run_in_executor(
                        None, swf_celery.send_with_notify, "async_durable", {"after": True}, url)
                else:
                    break
        return kinds

    assert asyncio.run(asyncio.wait_for(main(), 60)) == ["gap", "message"]
