"""The event-loop consumer reads only the queues that may hold messages: a worker busy with
one queue's backlog still hears control commands and other queues at once (their NOTIFY),
not after the polling fallback, and every task is acked. A stop signal wakes the hub's poll."""

from __future__ import annotations

import select
import signal
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery
from celery.signals import worker_shutting_down
from kombu import Consumer, Queue
from kombu.asynchronous import Hub
from psycopg import sql

import swf_celery  # noqa: F401 - registers swf://
from swf_celery.transport import eventloop
from swf_celery.transport.eventloop import _worth_reading
from tests.helpers import (
    queue_size,
    run_hub_until,
    sql_value,
    task_runs,
    wait_until,
    worker_process,
)

pytestmark = pytest.mark.slow
APP = "tests.transport.broker_app"
BACKLOG = 300


def test_busy_worker_hears_control_and_other_queues_at_once(broker: str,
                                                             client: Celery) -> None:
    # The polling fallback is 60 s: only a NOTIFY can bring the ping or the urgent task.
    env = {"SWF_TEST_BROKER": broker, "SWF_TEST_POLL": "60"}
    with worker_process(APP, queues=["bulk", "urgent"], env=env, concurrency=2,
                        hostname="busy@testhost") as proc:
        for i in range(BACKLOG):
            client.send_task("slow", args=[f"bulk-{i}", 0.05], queue="bulk")
        wait_until(lambda: task_runs(broker, "bulk-3"), 30, "the backlog started", proc=proc)

        for round_ in (1, 2):  # the second time, after the first NOTIFY used the arm
            started = time.monotonic()
            replies = client.control.inspect(timeout=3, destination=["busy@testhost"]).ping()
            assert replies == {"busy@testhost": {"ok": "pong"}}, (round_, replies)
            assert time.monotonic() - started < 3.5

            client.send_task("record", args=[f"urgent-{round_}"], queue="urgent")
            wait_until(lambda r=round_: task_runs(broker, f"urgent-{r}"), 5,
                       f"urgent task {round_} ran", proc=proc)
        done = {tag for tag, phase in task_runs(broker) if phase == "done"}
        assert len([t for t in done if t.startswith("bulk-")]) < BACKLOG - 20, \
            "the urgent tasks waited for the backlog"

        wait_until(lambda: len(task_runs(broker)) == 2 * BACKLOG + 2, 60,
                   "the backlog finished", proc=proc)
        # Acks ride on reads or follow within milliseconds: nothing stays queued.
        wait_until(lambda: queue_size(broker, "bulk") == 0, 5, "every ack written",
                   proc=proc)


def test_stop_signal_wakes_the_hub_poll(connections: Any) -> None:
    # As in a worker: a signal arrives while the hub's thread waits in its poll, and its
    # Python handler (Celery's sends worker_shutting_down) runs before the poll resumes.
    # Without a wake-up the poll would sleep out its timeout before the loop saw the stop.
    receivers = len(worker_shutting_down.receivers)
    conn = connections()
    hub = Hub()
    conn.transport.register_with_event_loop(conn.connection, hub)
    wakeup = conn.transport.wakeup()
    wakeup.consume()  # pokes of the start-up

    def handler(signum: int, frame: Any) -> None:
        worker_shutting_down.send(sender="test@host", sig="SIGTERM", how="Warm", exitcode=0)

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        events = hub.poller.poll(10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        hub.close()
    assert wakeup.pipe_fd in [fd for fd, _ in events or ()]

    conn.release()  # a closed consumer stops listening for the signal
    assert len(worker_shutting_down.receivers) == receivers



def test_a_notify_seen_before_its_arm_result_rearms_the_queue(connections: Any) -> None:
    # The arm runs in the reader thread. A send right after it NOTIFYs the consumer;
    # when the hub sees that NOTIFY before the arm's result, the queue must not be taken as
    # armed: it is read, then armed again, so the next send NOTIFYs too. The polling
    # fallback is 60 s: only a NOTIFY can bring the last message. Hand-over off: the
    # NOTIFYs wake the consumer to read (a handed message needs no read, and no re-arm).
    conn, producer = connections(polling_interval=60, hand_over=False), connections()
    hub = Hub()
    conn.transport.register_with_event_loop(conn.connection, hub)
    consumer = conn.transport._hub
    got: list[str] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        message.ack()

    queue = Queue("arm-race")
    try:
        with Consumer(conn.default_channel, [queue], callbacks=[on_message], accept=["json"]):
            run_hub_until(hub, lambda: "arm-race" in consumer._armed, "first arm")
            producer.Producer().publish("a", serializer="json", routing_key="arm-race",
                                        declare=[queue])
            run_hub_until(hub, lambda: got == ["a"], "a delivered")
            # Woken for "a", the consumer stays asleep: no new arm. The sweep reads every
            # queue and arms them again (an empty read after a wake-up does the same).
            run_hub_until(hub, lambda: consumer._arming is None and not consumer._pass
                           and consumer._in_flight is None, "the pass of a ended")
            consumer._last_sweep = 0.0
            consumer._on_timer()
            assert consumer._arming == ["arm-race"]  # the arm after the sweep, under way

            # The arm ends in the reader thread, then a send uses its mark up; the hub
            # takes the NOTIFY first, the arm's result second.
            assert select.select([consumer._reader.fd], [], [], 5)[0], "the arm ended"
            producer.Producer().publish("b", serializer="json", routing_key="arm-race")
            listen_fd = conn.transport.wakeup().notify_fd
            assert select.select([listen_fd], [], [], 5)[0], "the NOTIFY of b arrived"
            consumer.on_readable(listen_fd)
            consumer._on_read_done()
            assert "arm-race" not in consumer._armed

            run_hub_until(hub, lambda: got == ["a", "b"], "b delivered")
            run_hub_until(hub, lambda: consumer._arming is None
                           and "arm-race" in consumer._armed, "armed again after b")
            producer.Producer().publish("c", serializer="json", routing_key="arm-race")
            run_hub_until(hub, lambda: got == ["a", "b", "c"], "c delivered by its NOTIFY")
    finally:
        hub.close()


def test_a_busy_worker_reads_in_batches(connections: Any) -> None:
    # Celery's own bookkeeping of the worker's requests: received (reserved) and started
    # (active). A read waits while 2 tasks are still to start and the window is not free
    # but for 2 slots; an idle worker and a channel without a window read at once.
    from celery.worker import state

    channel = connections().default_channel
    channel.basic_qos(0, 8, False)
    assert _worth_reading(channel, 1), "an idle worker reads one message at once"
    class Request:  # Celery keeps its requests in weak sets
        pass

    received = [Request(), Request(), Request()]
    state.reserved_requests.update(received)
    try:
        assert not _worth_reading(channel, 5), "3 tasks to start: the read waits for room"
        assert _worth_reading(channel, 6), "all but 2 slots free: read"
        state.active_requests.update(received[:2])
        assert _worth_reading(channel, 1), "1 task left to start: read"
        state.active_requests.difference_update(received[:2])
        channel.basic_qos(0, 0, False)
        assert _worth_reading(channel, 1), "no window (a control queue): read"
    finally:
        state.reserved_requests.difference_update(received)
        state.active_requests.difference_update(received)


def _holding_consumer(connections: Any, queue_name: str, window: int,
                      count: int) -> tuple[Hub, Any, Any, list[Any]]:
    """A hub consuming ``queue_name`` with a prefetch window of ``window``, ``count``
    messages published to it; the messages delivered are kept unacknowledged in the list
    returned. The polling fallback and the sweep are 60 s: only the hub's own follow-ups
    read."""
    conn = connections(polling_interval=60, sweep_interval=60)
    producer = connections()
    queue = Queue(queue_name)
    for i in range(count):
        producer.Producer().publish(i, serializer="json", routing_key=queue_name,
                                    declare=[queue])
    hub = Hub()
    conn.transport.register_with_event_loop(conn.connection, hub)
    held: list[Any] = []
    channel = conn.default_channel
    channel.basic_qos(0, window, False)
    consumer = Consumer(channel, [queue], callbacks=[lambda _b, m: held.append(m)],
                        accept=["json"])
    consumer.consume()
    return hub, conn.transport._hub, consumer, held


def test_a_read_held_for_tasks_about_to_start_is_made_when_they_start(
        connections: Any) -> None:
    # A thread pool starts a task in its own thread: nothing pokes the hub. A read held back
    # while tasks were still to start must still be made once they have started, not at
    # the next ack (here: none comes).
    from celery.worker import state

    class Request:
        pass

    hub, consumer, kombu_consumer, held = _holding_consumer(connections, "held-read", 8, 12)
    received = [Request(), Request(), Request()]
    try:
        run_hub_until(hub, lambda: len(held) == 8, "the window filled")
        state.reserved_requests.update(received)  # delivered, not started yet
        for message in held[:2]:
            message.ack()  # two slots free: the read is held (3 tasks still to start)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            hub.run_once()
        assert len(held) == 8, "the read waited for room"
        state.active_requests.update(received)  # they start; no ack, no poke
        run_hub_until(hub, lambda: len(held) == 10, "the free slots filled", timeout=2)
    finally:
        state.reserved_requests.difference_update(received)
        state.active_requests.difference_update(received)
        kombu_consumer.cancel()
        hub.close()


def test_an_ack_made_by_a_ready_callback_reads_before_the_next_poll(connections: Any) -> None:
    # A thread pool hands its acks to the hub with call_soon; the hub runs them among its
    # ready callbacks and then polls. The read the ack allows is made before that poll,
    # which would otherwise wait for the next event.
    hub, consumer, kombu_consumer, held = _holding_consumer(connections, "ready-ack", 1, 3)
    try:
        run_hub_until(hub, lambda: len(held) == 1, "the first message")
        run_hub_until(hub, lambda: consumer._arming is None and consumer._in_flight is None
                       and not consumer._pass, "the pass ended")
        hub.call_soon(held[0].ack)
        started = time.monotonic()
        hub.run_once()  # the ack, then the read: one iteration
        assert len(held) == 2, f"read {time.monotonic() - started:.3f} s later, not at once"
    finally:
        kombu_consumer.cancel()
        hub.close()


def _counted_hub(connections: Any) -> tuple[Any, Hub, Any, list[list[str]], list[str], Any]:
    """A consumer connection on a hub that only NOTIFYs bring messages to (poll 60 s, sweep
    600 s, hand-over off): (connection, hub, its HubConsumer, the queue lists it slept on,
    the bodies delivered, a callback that records and acks them)."""
    conn = connections(polling_interval=60, sweep_interval=600, hand_over=False)
    hub = Hub()
    conn.transport.register_with_event_loop(conn.connection, hub)
    consumer = conn.transport._hub
    arms: list[list[str]] = []
    got: list[str] = []
    arm = consumer._arm

    def counted_arm(queues: list[str]) -> Any:
        arms.append(queues)
        return arm(queues)

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        message.ack()

    consumer._arm = counted_arm
    return conn, hub, consumer, arms, got, on_message


def test_a_consumer_woken_for_a_message_taken_by_another_stays_asleep(
        connections: Any, db_url: str) -> None:
    # A wake-up whose message another consumer took first (or one still delayed) finds
    # nothing to read. The consumer is still asleep, at the back of the line: it makes no
    # new sleep (a statement that takes the queue's wake-up lock from producers), and the
    # next message wakes it again. A delayed message is read when it is due, by the time
    # the empty read reported, not by the sweep (600 s) or the poll (60 s). Hand-over off.
    producer = connections(eta_threshold=0.5)
    conn, hub, consumer, sleeps, got, on_message = _counted_hub(connections)

    def idle() -> bool:
        return (consumer._arming is None and not consumer._pass
                and consumer._in_flight is None and not consumer._woken)

    queue = Queue("woken-empty")
    listen_fd = conn.transport.wakeup().notify_fd
    try:
        with Consumer(conn.default_channel, [queue], callbacks=[on_message], accept=["json"]):
            run_hub_until(hub, lambda: "woken-empty" in consumer._armed and idle(),
                          "asleep on the queue")
            sleeps.clear()
            pgmq = sql_value(db_url, "SELECT pgmq_name FROM swf.queues "
                                     "WHERE name = 'woken-empty'")
            # Another consumer takes "a" between its wake-up and this consumer's read.
            producer.Producer().publish("a", serializer="json", routing_key="woken-empty",
                                        declare=[queue])
            assert select.select([listen_fd], [], [], 5)[0], "the wake-up of a arrived"
            taken = sql_value(db_url, sql.SQL(
                "WITH t AS (UPDATE pgmq.{} SET vt = now() + interval '1 hour', "
                "read_ct = read_ct + 1 RETURNING 1) SELECT count(*) FROM t").format(
                    sql.Identifier(f"q_{pgmq}")))
            assert taken == 1
            run_hub_until(hub, lambda: consumer._next_due is not None and idle(),
                          "the empty read, and when the next message is due")
            assert got == [] and sleeps == []
            assert "woken-empty" in consumer._armed
            assert consumer._next_due - time.monotonic() > 3000  # "a", an hour away
            asleep = sql_value(db_url, "SELECT count(*) FROM swf.queue_sleepers s JOIN "
                                       "swf.queues q ON q.id = s.queue_id "
                                       "WHERE q.name = 'woken-empty'")
            assert asleep == 1

            producer.Producer().publish("b", serializer="json", routing_key="woken-empty")
            run_hub_until(hub, lambda: got == ["b"], "b delivered by its wake-up")

            # Due in 2 s: its insert wakes the consumer, which finds it hidden.
            eta = (datetime.now(timezone.utc) + timedelta(seconds=2.6)).isoformat()
            producer.Producer().publish("c", serializer="json", routing_key="woken-empty",
                                        headers={"eta": eta})
            run_hub_until(hub, lambda: consumer._next_due is not None
                          and consumer._next_due - time.monotonic() < 3 and idle(),
                          "the empty read of c's wake-up")
            assert sleeps == [] and got == ["b"]
            run_hub_until(hub, lambda: got == ["b", "c"], "c delivered when due", timeout=8)
    finally:
        hub.close()


def test_a_worker_on_many_queues_sleeps_on_them_in_steps(
        connections: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # One sleep over every queue a pass left would keep the reader thread (and so any
    # read of a woken queue) for as long as it takes: 1.5-2 s over 1,000 queues. The
    # queues are armed ARM_STEP at a time, in passes that follow at once, and a message on
    # the last of them still comes by its wake-up (the sweep is 600 s, the poll 60 s).
    monkeypatch.setattr(eventloop, "ARM_STEP", 2)
    producer = connections()
    conn, hub, consumer, arms, got, on_message = _counted_hub(connections)

    names = [f"step-{i}" for i in range(5)]
    queues = [Queue(name) for name in names]
    try:
        with Consumer(conn.default_channel, queues, callbacks=[on_message], accept=["json"]):
            run_hub_until(hub, lambda: set(names) <= consumer._armed
                          and consumer._arming is None, "asleep on every queue")
            assert all(len(a) <= 2 for a in arms) and len(arms) >= 3
            assert set(names) == {q for a in arms for q in a}
            last = arms[-1][-1]
            producer.Producer().publish("late", serializer="json", routing_key=last,
                                        declare=[Queue(last)])
            run_hub_until(hub, lambda: got == ["late"], "the message on the last step's queue")
    finally:
        hub.close()
