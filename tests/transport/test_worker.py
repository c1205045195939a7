"""Real `celery worker` subprocesses on the swf:// broker."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery
from psycopg.types.json import Jsonb

import swf_celery  # noqa: F401 - registers swf://
from tests.helpers import (
    ROOT,
    kill_worker,
    kombu_message,
    pg_url,
    queue_size,
    read_log,
    run_module,
    task_runs,
    wait_until,
    worker_process,
)

pytestmark = pytest.mark.slow
APP = "tests.transport.broker_app"


@pytest.fixture
def client(broker: str) -> Iterator[Celery]:
    """The shared client (conftest), with a visibility timeout for the replies it reads."""
    app = Celery("client", broker=broker, set_as_current=False)
    app.conf.broker_transport_options = {"visibility_timeout": 60}
    yield app
    app.close()


def env(broker: str, **extra: str) -> dict[str, str]:
    return {"SWF_TEST_BROKER": broker, **extra}


def test_worker_consumes_only_its_queue_and_sql_enqueued_messages(
        broker: str, client: Celery) -> None:
    client.send_task("record", args=["default"])  # queue "celery": nobody consumes it
    with worker_process(APP, queues=["gpu_workers"], env=env(broker)) as proc:
        client.send_task("record", args=["gpu"], queue="gpu_workers")
        # The workflow engine's path: a message enqueued in SQL inside its own transaction.
        msg = kombu_message("sql-task", queue="gpu_workers")
        msg["headers"]["task"] = "record"
        msg["body"] = '[["from-sql"], {}, {"callbacks": null, "errbacks": null, ' \
                      '"chain": null, "chord": null}]'
        with psycopg.connect(pg_url(broker)) as conn:
            conn.execute("SELECT swf.queue_send('gpu_workers', %s)", [Jsonb(msg)])
        wait_until(lambda: len(task_runs(broker)) >= 2, what="two tasks", proc=proc)
        time.sleep(0.5)
    assert sorted(task_runs(broker)) == [("from-sql", "done"), ("gpu", "done")]
    assert queue_size(broker, "celery") == 1


def _celery_cli(broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, SWF_TEST_BROKER=broker, PYTHONPATH=str(ROOT))
    return run_module("celery", "-A", APP, *args, env=full_env, cwd=ROOT, timeout=60)


def test_inspect_control_revoke_and_shutdown(broker: str, client: Celery) -> None:
    with worker_process(APP, queues=["gpu_workers"], env=env(broker),
                        hostname="gpu1@testhost") as proc:
        ping = _celery_cli(broker, "inspect", "ping", "--timeout", "5")
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
        queues = client.control.inspect(timeout=5).active_queues()
        assert [q["name"] for q in queues["gpu1@testhost"]] == ["gpu_workers"]

        # A task waiting for its countdown in PostgreSQL; revoke deletes its message.
        result = client.send_task("record", args=["revoked"], queue="gpu_workers",
                                  countdown=3600)
        assert queue_size(broker, "gpu_workers") == 1
        revoke = _celery_cli(broker, "control", "revoke", result.id)
        assert revoke.returncode == 0, revoke.stderr
        assert queue_size(broker, "gpu_workers") == 0

        client.control.shutdown(destination=["gpu1@testhost"])
        proc.wait(30)
        assert proc.returncode == 0, read_log(proc)[-3000:]


def test_sigkilled_worker_loses_nothing(broker: str, client: Celery) -> None:
    vt = env(broker, SWF_TEST_VT="2")
    with worker_process(APP, queues=["celery"], env=vt) as first:
        client.send_task("slow", args=["crash", 2.0])
        wait_until(lambda: task_runs(broker, "crash"), what="task start", proc=first)
        kill_worker(first)
    assert task_runs(broker, "crash") == [("crash", "start")]
    with worker_process(APP, queues=["celery"], env=vt) as second:
        wait_until(lambda: ("crash", "done") in task_runs(broker, "crash"), timeout=40,
                   what="task rerun", proc=second)
    assert task_runs(broker, "crash") == [("crash", "start"), ("crash", "start"),
                                          ("crash", "done")]


def test_long_task_is_not_delivered_twice(broker: str, client: Celery) -> None:
    # A task 4x longer than the visibility timeout, with another idle worker ready to steal it.
    vt = env(broker, SWF_TEST_VT="1")
    with worker_process(APP, queues=["celery"], env=vt, hostname="a@test") as a, \
            worker_process(APP, queues=["celery"], env=vt, hostname="b@test"):
        client.send_task("slow", args=["long", 4.0])
        wait_until(lambda: ("long", "done") in task_runs(broker, "long"), timeout=40,
                   what="long task", proc=a)
        time.sleep(1.5)
    assert task_runs(broker, "long") == [("long", "start"), ("long", "done")]


def test_worker_events_reach_an_events_consumer(broker: str, client: Celery) -> None:
    seen: list[str] = []
    receivers: list[Any] = []

    def capture() -> None:
        with client.connection_for_read() as conn:
            recv = client.events.Receiver(conn, handlers={"*": lambda e: seen.append(e["type"])})
            receivers.append(recv)
            recv.capture(limit=None, timeout=60, wakeup=False)

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    wait_until(lambda: receivers, what="events receiver")
    time.sleep(1.0)  # let the receiver declare and bind its queue
    try:
        with worker_process(APP, queues=["celery"], env=env(broker),
                            extra_args=["-E"]) as proc:
            client.send_task("record", args=["evented"])
            wait_until(lambda: "task-succeeded" in seen, timeout=30,
                       what="task-succeeded event", proc=proc)
    finally:
        receivers[0].should_stop = True
        thread.join(10)
    assert "task-received" in seen and "task-started" in seen
