"""The event-loop consumer reads only the queues that may hold messages: a worker busy with
one queue's backlog still hears control commands and other queues at once (their NOTIFY),
not after the polling fallback, and every task is acked. A stop signal wakes the hub's poll."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from celery import Celery
from celery.signals import worker_shutting_down
from kombu.asynchronous import Hub

import swf_celery  # noqa: F401 - registers swf://
from tests.helpers import queue_size, task_runs, wait_until, worker_process

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
