"""The Celery task that runs distributed steps on workers: ``swf_celery.step``.

The coordinator sends every distributed step as a message for this task (headers
``shadow`` = the user's task name, so logs and monitors show it). On the worker it

1. asks the coordinator to start the task (``swf.start_task``): this returns the step's
   input, or nothing when the message is a duplicate, a superseded attempt, or its run
   is no longer active — then it returns without running anything;
2. calls the user's registered task in-process with the one-mapping input;
3. reports the output (or the error, or a soft time limit as a timeout) to the
   coordinator, whose transaction also dispatches the steps that became ready.

It needs no result backend. The database is the app's (:func:`swf_celery.db.database_url`:
``app.conf.swf_database_url``, else the ``swf://`` broker URL, else the ``swf://`` result
backend, else ``$SWF_DATABASE_URL``, else a running embedded server).
It is registered with every Celery app as a shared task when
:mod:`swf_celery.workflows.steps` is used (``@swf_celery.step``); an app that only runs
steps may ``import swf_celery.workflows.worker_task`` instead.
"""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from swf_celery import db
from swf_celery.errors import DatabaseUnavailable
from swf_celery.workflows import coordinator

#: Seconds between two sweeps of timed-out attempts by one worker process.
SWEEP_INTERVAL = 30.0


def database_for(app: Any) -> db.Database:
    """The coordinator database of a Celery app (see the module docstring)."""
    url = db.with_listen_url(db.database_url(app=app).url, app.conf.get("swf_listen_url"))
    return db.resolve(url, role="steps")


# acks_late + reject_on_worker_lost: a worker that dies mid-step gives the message back,
# so the attempt runs again (at-least-once); the coordinator ignores duplicate reports.
@shared_task(name=coordinator.STEP_TASK_NAME, bind=True, acks_late=True,
             reject_on_worker_lost=True, ignore_result=True)
def run_step(self: Any, ref: dict[str, Any]) -> None:
    """Run one step task of a workflow run (``ref``: run id, step, index, attempt)."""
    database = database_for(self.app)
    task_id = self.request.id
    claim = coordinator.start_task(database, task_id)
    if claim is None:
        return  # duplicate delivery, superseded attempt, or the run ended: nothing to do
    function = self.app.tasks.get(claim["task_name"])
    if function is None:
        _report(coordinator.fail_task, database, task_id,
                f"task {claim['task_name']!r} is not registered on worker "
                f"{self.request.hostname}")
        return
    try:
        output = function(claim["input"])
    except SoftTimeLimitExceeded:
        _report(coordinator.fail_task, database, task_id,
                f"timed out after {claim['timeout_ms'] / 1000:g} s")
        return
    except Exception as exc:  # the step's own failure: reported, the attempt retried or failed
        _report(coordinator.fail_task, database, task_id, f"{type(exc).__name__}: {exc}")
        return
    _report(coordinator.complete_task, database, task_id, output)
    _sweep(database)


def _report(call: Any, database: db.Database, task_id: str, value: Any) -> None:
    # If the outcome cannot be stored even after retries, the message goes back to the
    # queue and the attempt runs again later.
    try:
        coordinator.report_outcome(call, database, task_id, value)
    except DatabaseUnavailable as exc:
        raise Reject(f"cannot report step task {task_id}: {exc}", requeue=True) from exc


_last_sweep = 0.0


def _sweep(database: db.Database) -> None:
    # An attempt whose worker died past its hard time limit reports nothing and its message
    # is acked; callers waiting on the run expire it, and so do workers, every
    # SWEEP_INTERVAL seconds, so that a run nobody waits on cannot hang on it forever.
    global _last_sweep
    now = time.monotonic()
    if now - _last_sweep >= SWEEP_INTERVAL:
        _last_sweep = now
        coordinator.expire_tasks(database)
