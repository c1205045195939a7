"""An idle worker reads only what woke it: no statement per consumed queue per second.

With wake-ups, a `celery worker` reads every consumed queue only at its sweep
(``sweep_interval``, 30 s); between sweeps NOTIFYs (new messages and requeues), the
listener's gaps and due messages say what to read. These tests run real workers.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from celery import Celery
from kombu import Connection

from tests.helpers import pg_url, task_runs, wait_until, worker_process

pytestmark = pytest.mark.slow
APP = "tests.transport.broker_app"


def _longest_idle(broker: str) -> float:
    """Seconds since the broker connection of the worker that stayed idle longest last ran a
    statement (``pg_stat_activity.state_change``)."""
    with psycopg.connect(pg_url(broker), autocommit=True) as conn:
        row = conn.execute(
            "SELECT max(extract(epoch FROM clock_timestamp() - state_change)) "
            "  FROM pg_stat_activity WHERE datname = current_database() "
            "   AND application_name LIKE 'swf-broker@%%' AND state = 'idle'").fetchone()
    assert row is not None and row[0] is not None, "no idle broker connection"
    return float(row[0])


def test_an_idle_worker_on_fifty_queues_reads_none_of_them_between_sweeps(
        broker: str) -> None:
    queues = [f"idle-{i}" for i in range(50)]
    with worker_process(APP, queues=queues, env={"SWF_TEST_BROKER": broker}) as proc:
        wait_until(lambda: _longest_idle(broker) >= 5.0, timeout=20.0, proc=proc,
                   what="a broker connection idle for 5 s (a poll reads every second)")
        assert proc.poll() is None


def test_a_requeued_message_wakes_an_idle_worker_of_another_process(
        broker: str, client: Celery) -> None:
    client.send_task("record", args=["requeued"], queue="rq")
    holder = Connection(broker, transport_options={"visibility_timeout": 120})
    try:
        held = holder.default_channel.basic_get("rq", no_ack=False)
        assert held is not None
        with worker_process(APP, queues=["rq"], env={"SWF_TEST_BROKER": broker}) as proc:
            time.sleep(2.5)  # idle and armed: nothing visible, the held message due in 120 s
            assert task_runs(broker, "requeued") == []
            start = time.monotonic()
            held.requeue()
            # Neither the sweep (30 s) nor the held message's visibility (120 s): the
            # requeue's wake-up.
            wait_until(lambda: task_runs(broker, "requeued"), timeout=10.0,
                       what="the requeued task", proc=proc)
            assert time.monotonic() - start < 10.0
    finally:
        holder.release()
