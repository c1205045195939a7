"""Real ``celery worker`` processes on swf:// run in Celery's event loop and stop cleanly.

Workers start in their own process group (as under systemd); a stop is sent the way systemd
sends it (SIGTERM to every process of the group at once) or as ``kill PID`` (the main process
only). No test measures time: a worker that does not stop fails after a generous bound.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from celery import Celery

from tests.helpers import (
    next_visible,
    queue_size,
    read_log,
    sql,
    task_runs,
    wait_until,
    worker_process,
)

pytestmark = pytest.mark.slow
APP = "tests.transport.broker_app"
#: A worker that has not exited after this long is taken as hung (not a timing assertion).
STOP_BOUND = 40.0


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals, *, group: bool) -> int:
    """Send ``sig`` to the worker (its whole process group when ``group``); wait for exit."""
    if group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    try:
        return proc.wait(STOP_BOUND)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker did not stop on {sig.name} (group={group}):\n"
                             f"{read_log(proc)[-3000:]}") from None


def group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_worker_runs_the_asynchronous_pool_in_the_event_loop(
        broker: str, client: Celery) -> None:
    with worker_process(APP, env={"SWF_TEST_BROKER": broker}, hostname="hub@%h") as proc:
        stats = wait_until(lambda: client.control.inspect(timeout=5).stats(),
                           what="stats reply", proc=proc)
        pool = next(iter(stats.values()))["pool"]
        # Only the asynchronous prefork pool (AsynPool, run by the hub) keeps write
        # statistics and drops the semaphore around puts.
        assert isinstance(pool["writes"], dict), pool
        assert pool["put-guarded-by-semaphore"] is False
        for i in range(20):
            client.send_task("record", args=[f"t{i}"])
        wait_until(lambda: len(task_runs(broker)) == 20, what="20 tasks", proc=proc)


def test_event_loop_false_keeps_the_synchronous_loop(broker: str, client: Celery) -> None:
    env = {"SWF_TEST_BROKER": broker, "SWF_TEST_EVENT_LOOP": "false"}
    with worker_process(APP, env=env, hostname="sync@%h") as proc:
        stats = wait_until(lambda: client.control.inspect(timeout=5).stats(),
                           what="stats reply", proc=proc)
        assert next(iter(stats.values()))["pool"]["writes"] == "N/A"
        client.send_task("record", args=["sync"])
        wait_until(lambda: task_runs(broker) == [("sync", "done")], what="task ran", proc=proc)


@pytest.mark.parametrize(("sig", "group"), [
    (signal.SIGTERM, True), (signal.SIGTERM, False),
    (signal.SIGQUIT, True), (signal.SIGQUIT, False),
], ids=["term-group", "term-main", "quit-group", "quit-main"])
def test_stop_gives_held_messages_back_at_once(
        broker: str, client: Celery, sig: signal.Signals, group: bool) -> None:
    with worker_process(APP, env={"SWF_TEST_BROKER": broker}) as proc:
        # Countdown under eta_threshold: the worker holds it in memory (unacknowledged).
        client.send_task("record", args=["later"], countdown=25)
        wait_until(lambda: (next_visible(broker, "celery") or 0) > 5,
                   what="message held by the worker", proc=proc)
        stop(proc, sig, group=group)
        # Visible again at once, not after the 60 s visibility timeout.
        assert next_visible(broker, "celery") == 0, read_log(proc)[-3000:]
        wait_until(lambda: group_gone(proc.pid), what="all worker processes gone")
    assert task_runs(broker) == []


def test_group_sigterm_stops_a_busy_worker_every_time(broker: str, client: Celery) -> None:
    for cycle in range(5):
        with worker_process(APP, env={"SWF_TEST_BROKER": broker}) as proc:
            client.send_task("slow", args=[f"busy{cycle}", 1.0])
            client.send_task("record", args=[f"queued{cycle}"], countdown=20)
            wait_until(lambda c=cycle: (f"busy{c}", "start") in task_runs(broker),
                       what="task started", proc=proc)
            stop(proc, signal.SIGTERM, group=True)
            wait_until(lambda: group_gone(proc.pid), what="all worker processes gone")
        # Nothing is lost: the running task finished or its message is queued again, and
        # the held countdown task is visible again at once.
        done = (f"busy{cycle}", "done") in task_runs(broker)
        assert next_visible(broker, "celery") == 0
        assert queue_size(broker, "celery") == (1 if done else 2)
        sql(broker, "SELECT swf.queue_purge('celery')")


def test_an_embedded_idle_worker_stops_within_its_shutdown_timeout(broker: str) -> None:
    # celery.contrib.testing.worker (Celery's `celery_worker` fixture) stops its worker by
    # setting a flag, with no signal to wake the hub: an idle hub must not sleep until the
    # next sweep (60 s here) before it sees the flag.
    import time

    from celery.contrib.testing.worker import start_worker

    app = Celery("embedded", broker=broker, set_as_current=False)
    app.conf.broker_transport_options = {"sweep_interval": 60}
    try:
        started = time.monotonic()
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                          shutdown_timeout=5):
            time.sleep(2)  # idle: the hub is in its poll
        assert time.monotonic() - started < 10
    finally:
        app.close()
