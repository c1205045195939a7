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
