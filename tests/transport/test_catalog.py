"""Workers and monitors that come and go leave the system catalog as it was."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from celery import Celery

import swf_celery  # noqa: F401 - registers swf://
from tests.helpers import (
    ROOT,
    create_task_runs,
    queue_size,
    run_module,
    sql_value,
    swf_url,
    wait_until,
    worker_process,
)

pytestmark = pytest.mark.slow
APP = "tests.transport.broker_app"
RESTARTS = 8  # each start would create tables if any did; more starts add time, not evidence


def catalog_top(url: str) -> int:
    """The newest relation oid: unchanged as long as no table, index or sequence is created."""
    return int(sql_value(url, "SELECT max(oid::bigint) FROM pg_class"))


def celery_env(broker: str) -> dict[str, str]:
    return dict(os.environ, SWF_TEST_BROKER=broker, PYTHONPATH=str(ROOT))


def celery_cli(broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_module("celery", "-A", APP, *args, env=celery_env(broker), cwd=ROOT, timeout=60)


def event_queues(url: str) -> int:
    return int(sql_value(url, "SELECT count(*) FROM swf.queues WHERE name LIKE 'celeryev.%'"))


@contextlib.contextmanager
def events_monitor(broker: str) -> Iterator[subprocess.Popen[bytes]]:
    """``celery events --dump`` until its event queue is declared; then SIGTERM its group."""
    before = event_queues(broker)
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", APP, "events", "--dump"],
                            env=celery_env(broker), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: event_queues(broker) > before or proc.poll() is not None,
                   timeout=60, what="celery events declaring its queue")
        assert proc.poll() is None, "celery events exited"
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.mark.long
@pytest.mark.timeout(900)
def test_monitor_and_worker_restarts_leave_the_catalog_unchanged(db_url: str) -> None:
    create_task_runs(db_url)
    broker = swf_url(db_url)
    env = {"SWF_TEST_BROKER": broker}
    # Warm up: the durable "celery" queue is a pgmq queue (created once, as on RabbitMQ).
    with worker_process(APP, queues=["celery"], env=env, hostname="w0@%h",
                        extra_args=["-E"]):
        assert "pong" in celery_cli(broker, "inspect", "ping", "--timeout", "5").stdout
    top = catalog_top(db_url)

    for _ in range(RESTARTS):
        with events_monitor(broker):
            pass
    assert event_queues(db_url) >= 1
    assert catalog_top(db_url) == top

    for i in range(1, RESTARTS + 1):
        with worker_process(APP, queues=["celery"], env=env, hostname=f"w{i}@%h",
                            extra_args=["-E"], pool="solo"):
            pass
    assert catalog_top(db_url) == top

    # Control still works, and a plain `celery inspect ping` creates nothing either.
    client = Celery("client", broker=broker, set_as_current=False)
    try:
        with worker_process(APP, queues=["celery"], env=env, hostname="last@testhost") as proc:
            ping = celery_cli(broker, "inspect", "ping", "--timeout", "5")
            assert ping.returncode == 0 and "last@testhost" in ping.stdout, ping.stderr
            result = client.send_task("record", args=["revoked"], countdown=3600)
            assert queue_size(broker, "celery") == 1
            assert celery_cli(broker, "control", "revoke", result.id).returncode == 0
            assert queue_size(broker, "celery") == 0
            client.control.shutdown(destination=["last@testhost"])
            proc.wait(30)
            assert proc.returncode == 0
    finally:
        client.close()
    assert catalog_top(db_url) == top
