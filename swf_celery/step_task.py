"""The Celery task that runs distributed steps on workers: ``swf_celery.step``.

The coordinator sends every distributed step as a message for this task (headers
``shadow`` = the user's task name, so logs and monitors show it). On the worker it

1. asks the coordinator to start the task (``swf.start_task``): this returns the step's
   input, or nothing when the message is a duplicate, a superseded attempt, or its run
   is no longer active — then it returns without running anything;
2. calls the user's registered task in-process with the one-mapping input;
3. reports the output (or the error, or a soft time limit as a timeout) to the
   coordinator, whose transaction also dispatches the steps that became ready.

It needs no result backend. The database is ``app.conf.swf_database_url``, else the
``swf://`` broker URL, else ``$SWF_DATABASE_URL``. It is registered with every Celery app
as a shared task when :mod:`swf_celery.definition` is used (``@swf_celery.step``); an app
that only runs steps may ``import swf_celery.step_task`` instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from celery import shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from swf_celery import coordinator
from swf_celery.db import Database, resolve
from swf_celery.errors import ConfigurationError, DatabaseUnavailable

DATABASE_SETTING = "swf_database_url"
#: Seconds between two sweeps of timed-out attempts by one worker process.
SWEEP_INTERVAL = 30.0
#: Pauses between attempts to store a step's outcome while the database is unreachable.
REPORT_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


def database_for(app: Any) -> Database:
    """The coordinator database of a Celery app (see the module docstring)."""
    url = app.conf.get(DATABASE_SETTING)
    if not url:
        broker = app.conf.broker_url or ""
        if isinstance(broker, str) and broker.split("://", 1)[0] in ("swf", "postgresql",
                                                                      "postgres"):
            url = broker
    url = url or os.environ.get("SWF_DATABASE_URL")
    if not url:
        raise ConfigurationError(
            f"cannot find the workflow database: set app.conf.{DATABASE_SETTING}, use an "
            "swf:// broker_url, or set SWF_DATABASE_URL")
    return resolve(url)


# acks_late + reject_on_worker_lost: a worker that dies mid-step gives the message back,
# so the attempt runs again (at-least-once); the coordinator ignores duplicate reports.
@shared_task(name="swf_celery.step", bind=True, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def run_step(self: Any, ref: dict[str, Any]) -> None:
    """Run one step task of a workflow run (``ref``: run id, step, index, attempt)."""
    db = database_for(self.app)
    task_id = self.request.id
    claim = coordinator.start_task(db, task_id)
    if claim is None:
        return  # duplicate delivery, superseded attempt, or the run ended: nothing to do
    function = self.app.tasks.get(claim["task_name"])
    if function is None:
        _report(coordinator.fail_task, db, task_id,
                f"task {claim['task_name']!r} is not registered on worker "
                f"{self.request.hostname}")
        return
    try:
        output = function(claim["input"])
    except SoftTimeLimitExceeded:
        _report(coordinator.fail_task, db, task_id,
                f"timed out after {claim['timeout_ms'] / 1000:g} s")
        return
    except Exception as exc:  # the step's own failure: reported, the attempt retried or failed
        _report(coordinator.fail_task, db, task_id, f"{type(exc).__name__}: {exc}")
        return
    _report(coordinator.complete_task, db, task_id, output)
    _sweep(db)


def _report(call: Callable[[Database, str, Any], str], db: Database, task_id: str,
            value: Any) -> None:
    # The outcome is worth a few retries over a database restart. If it still cannot be
    # stored, the message goes back to the queue and the attempt runs again later.
    for delay in REPORT_RETRY_DELAYS:
        try:
            call(db, task_id, value)
            return
        except DatabaseUnavailable:
            time.sleep(delay)
    try:
        call(db, task_id, value)
    except DatabaseUnavailable as exc:
        raise Reject(f"cannot report step task {task_id}: {exc}", requeue=True) from exc


_last_sweep = 0.0


def _sweep(db: Database) -> None:
    # An attempt whose worker died past its hard time limit reports nothing and its message
    # is acked; callers waiting on the run expire it, and so do workers, every
    # SWEEP_INTERVAL seconds, so that a run nobody waits on cannot hang on it forever.
    global _last_sweep
    now = time.monotonic()
    if now - _last_sweep >= SWEEP_INTERVAL:
        _last_sweep = now
        coordinator.expire_tasks(db)
