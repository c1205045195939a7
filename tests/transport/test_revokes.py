"""Revokes that hold: a revoked task never runs, even after every worker restarts.

Real ``celery worker`` processes on swf://; the worker holding the revoked task's message
(a countdown under ``eta_threshold`` waits in worker memory) is stopped as systemd stops it,
and a fresh worker, whose memory knows nothing of the revoke, takes the message back.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from celery import Celery

from tests.helpers import (
    next_visible,
    queue_size,
    read_log,
    sql,
    sql_value,
    task_runs,
    wait_until,
    worker_process,
)

pytestmark = pytest.mark.slow
APP = "tests.transport.broker_app"


def _stop_group(proc: object) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # type: ignore[attr-defined]
    proc.wait(40)  # type: ignore[attr-defined]


def _revoke_while_held(broker: str, client: Celery, tag: str, **worker_env: str) -> str:
    """Send a 10 s countdown task, revoke it while a worker holds it, stop that worker."""
    with worker_process(APP, env={"SWF_TEST_BROKER": broker, **worker_env},
                        hostname="first@%h") as proc:
        task_id = client.send_task("record", args=[tag], countdown=10).id
        wait_until(lambda: (next_visible(broker, "celery") or 0) > 5,
                   what="countdown message held by the worker", proc=proc)
        client.control.revoke(task_id)
        wait_until(lambda: f"Tasks flagged as revoked: {task_id}" in read_log(proc),
                   what="revoke received", proc=proc)
        _stop_group(proc)
    # The held message went back to its queue; the revoke is recorded.
    assert next_visible(broker, "celery") == 0
    assert sql_value(broker, "SELECT count(*) FROM swf.revoked_tasks WHERE task_id = %s",
                     (task_id,)) == 1
    return task_id


@pytest.mark.long
def test_revoked_countdown_task_never_runs_after_every_worker_restarts(
        broker: str, client: Celery) -> None:
    task_id = _revoke_while_held(broker, client, "revoked")
    with worker_process(APP, env={"SWF_TEST_BROKER": broker}, hostname="second@%h") as proc:
        wait_until(lambda: f"Discarding revoked task: record[{task_id}]" in read_log(proc),
                   what="revoked task discarded", proc=proc)
        wait_until(lambda: queue_size(broker, "celery") == 0, what="message acked", proc=proc)
        revoked = client.control.inspect(timeout=5).revoked() or {}
        assert any(task_id in ids for ids in revoked.values()), revoked
        # Past the countdown: still never ran.
        client.send_task("record", args=["marker"], countdown=11)
        wait_until(lambda: ("marker", "done") in task_runs(broker), timeout=60,
                   what="a task sent with a later countdown ran", proc=proc)
    assert ("revoked", "done") not in task_runs(broker)


def test_a_revoke_expires_as_celery_worker_revoke_expires_says(
        broker: str, client: Celery) -> None:
    # Workers that forget revokes after 1 s: the recorded revoke is forgotten too.
    expiring = {"CELERY_WORKER_REVOKE_EXPIRES": "1"}
    task_id = _revoke_while_held(broker, client, "expired", **expiring)
    time.sleep(1.5)  # let the 1 s revoke expiry pass (not a timing assertion)
    with worker_process(APP, env={"SWF_TEST_BROKER": broker, **expiring},
                        hostname="second@%h") as proc:
        wait_until(lambda: ("expired", "done") in task_runs(broker), timeout=60,
                   what="task with an expired revoke ran", proc=proc)
    # The reader dropped the expired row.
    assert sql(broker, "SELECT task_id FROM swf.revoked_tasks WHERE task_id = %s",
               (task_id,)) == []
