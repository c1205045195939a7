"""PostgreSQL restarted under a running worker: it reconnects and goes on, losing nothing."""

from __future__ import annotations

import psycopg
import pytest
from celery import Celery

import swf_celery  # noqa: F401 - registers swf://
from tests.conftest import PrivateServer
from tests.test_transport_worker import runs, wait_for, worker

pytestmark = pytest.mark.slow


def test_worker_survives_postgres_restart(private_server: PrivateServer) -> None:
    with psycopg.connect(private_server.url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS task_runs")
        conn.execute("CREATE TABLE task_runs (id bigserial PRIMARY KEY, tag text, phase text, "
                     "pid integer, at timestamptz DEFAULT clock_timestamp())")
    broker = private_server.url.replace("postgresql://", "swf://", 1)
    client = Celery("client", broker=broker, set_as_current=False)
    try:
        with worker("tests.apps.broker_app", queues=["celery"],
                    env={"SWF_TEST_BROKER": broker}) as proc:
            client.send_task("record", args=["before"])
            wait_for(lambda: runs(broker, "before"), what="task before restart", proc=proc)
            private_server.restart()
            client.send_task("record", args=["after"])
            wait_for(lambda: runs(broker, "after"), timeout=60, what="task after restart",
                     proc=proc)
            assert proc.poll() is None
    finally:
        client.close()
    assert runs(broker) == [("before", "done"), ("after", "done")]
