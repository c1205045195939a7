"""PostgreSQL restarted under a running worker: it reconnects and goes on, losing nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from celery import Celery

import swf_celery  # noqa: F401 - registers swf://
from tests.helpers import create_task_runs, swf_url, task_runs, wait_until, worker_process

if TYPE_CHECKING:
    from tests.conftest import PrivateServer

pytestmark = pytest.mark.slow


def test_worker_survives_postgres_restart(private_server: PrivateServer) -> None:
    create_task_runs(private_server.url)
    broker = swf_url(private_server.url)
    client = Celery("client", broker=broker, set_as_current=False)
    try:
        with worker_process("tests.transport.broker_app", queues=["celery"],
                            env={"SWF_TEST_BROKER": broker}) as proc:
            client.send_task("record", args=["before"])
            wait_until(lambda: task_runs(broker, "before"), what="task before restart",
                       proc=proc)
            private_server.restart()
            client.send_task("record", args=["after"])
            wait_until(lambda: task_runs(broker, "after"), timeout=60,
                       what="task after restart", proc=proc)
            assert proc.poll() is None
    finally:
        client.close()
    assert task_runs(broker) == [("before", "done"), ("after", "done")]


def test_task_finishing_after_the_reconnect_does_not_stop_the_worker(
        private_server: PrivateServer) -> None:
    """A late ack (``task_acks_late``) of a task that was running when the connection was
    lost lands on the channel closed meanwhile: the worker goes on (it once died of an
    AttributeError there), and the task's message comes back after its visibility timeout
    (at-least-once: the task runs again)."""
    create_task_runs(private_server.url)
    broker = swf_url(private_server.url)
    client = Celery("client", broker=broker, set_as_current=False)
    try:
        with worker_process("tests.transport.broker_app", queues=["celery"], pool="threads",
                            env={"SWF_TEST_BROKER": broker, "SWF_TEST_VT": "3"}) as proc:
            client.send_task("slow", args=["running", 4.0])
            wait_until(lambda: task_runs(broker, "running"), what="task started", proc=proc)
            private_server.restart()
            wait_until(lambda: ("running", "done") in task_runs(broker, "running"),
                       timeout=60, what="the running task done", proc=proc)
            client.send_task("record", args=["after"])
            wait_until(lambda: task_runs(broker, "after"), timeout=60,
                       what="task after the late ack", proc=proc)
            assert proc.poll() is None
    finally:
        client.close()
