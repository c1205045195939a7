"""The step runner on workers: the body of the Celery task ``swf_celery.step``.

The coordinator sends every distributed step as a message for this task (headers
``shadow`` = the user's task name, so logs and monitors show it). The task is registered
with every Celery app by ``import swf_celery`` (:mod:`.registration`); on the worker it

1. asks the coordinator to start the task (``swf.start_task``): this returns the step's
   input, or nothing when the message is a duplicate, a superseded attempt, or its run
   is no longer active — then it returns without running anything;
2. calls the user's registered task in-process with the one-mapping input;
3. reports the output (or the error, or a soft time limit as a timeout) to the
   coordinator, whose transaction also dispatches the steps that became ready.

Every outcome is reported. An output that cannot be stored (not JSON, a NUL character,
too large) fails the attempt with that reason. A start or a report that cannot reach the
database is retried for :data:`~.coordinator.REPORT_RETRY_SECONDS` (Celery setting
``swf_report_retry_seconds``); if it never gets through, the message is rejected back to
its queue (not acknowledged) and the attempt runs again; one that keeps failing is
dead-lettered after ``max_deliveries``, which fails its attempt
(``swf.fail_dead_steps``). When a report fails the run, the run's other running attempts
are revoked with ``terminate=True``.

It needs no result backend. The database is the app's (:func:`swf_celery.db.database_url`:
``app.conf.swf_database_url``, else the ``swf://`` broker URL, else the ``swf://`` result
backend, else ``$SWF_DATABASE_URL``, else a running embedded server).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Reject, SoftTimeLimitExceeded

from swf_celery.db import Database, database_url, resolve, with_listen_url
from swf_celery.errors import SwfError
from swf_celery.workflows import conditions, coordinator

log = logging.getLogger("swf_celery.workflows.worker_task")

#: Celery setting: seconds a start or a report is retried before the message goes back.
RETRY_SETTING = "swf_report_retry_seconds"


def database_for(app: Any) -> Database:
    """The coordinator database of a Celery app (see the module docstring)."""
    url = with_listen_url(database_url(app=app).url, app.conf.get("swf_listen_url"))
    return resolve(url, role="steps")


def _budget(app: Any) -> float:
    return float(app.conf.get(RETRY_SETTING) or coordinator.REPORT_RETRY_SECONDS)


def run_step(task: Any, ref: dict[str, Any]) -> None:
    """Run one step task (``task`` is the bound Celery task; ``ref`` names the attempt)."""
    db = database_for(task.app)
    task_id = task.request.id
    try:
        claim = coordinator.with_retries(lambda: coordinator.start_task(db, task_id),
                                         _budget(task.app))
    except SwfError as exc:
        # Not acknowledged: the message goes back and the attempt is started again later.
        raise Reject(f"cannot start step task {task_id}: {exc}", requeue=True) from exc
    if claim is None:
        return  # duplicate delivery, superseded attempt, or the run ended: nothing to do
    function = task.app.tasks.get(claim["task_name"])
    if function is None:
        _report(task, db, claim, coordinator.fail_task,
                f"task {claim['task_name']!r} is not registered on worker "
                f"{task.request.hostname}")
        return
    try:
        skip = conditions.skip_reason(claim, conditions.of_task(function))
    except Exception as exc:  # the predicate's own failure fails the attempt
        _report(task, db, claim, coordinator.fail_task, coordinator.describe(exc))
        return
    if skip is not None:
        _report(task, db, claim, coordinator.skip_task, skip)
        return
    try:
        output = function(claim["input"])
    except SoftTimeLimitExceeded:
        _report(task, db, claim, coordinator.fail_task,
                f"timed out after {claim['timeout_ms'] / 1000:g} s")
        return
    except Exception as exc:  # the step's own failure: reported, the attempt retried or failed
        _report(task, db, claim, coordinator.fail_task, coordinator.describe(exc))
        return
    ok, value = coordinator.step_result(output)
    _report(task, db, claim, coordinator.complete_task if ok else coordinator.fail_task, value)


def _report(task: Any, db: Database, claim: dict[str, Any], call: Any,
            value: Any) -> None:
    task_id = task.request.id
    try:
        outcome = coordinator.report_outcome(call, db, task_id, value,
                                             _budget(task.app))
    except SwfError as exc:
        # Not acknowledged: the message goes back to its queue and the attempt runs again
        # (its report then counts once; a message that keeps failing is dead-lettered,
        # which fails the attempt).
        raise Reject(f"cannot report step task {task_id}: {exc}", requeue=True) from exc
    if outcome == "failed":
        revoke_running(task.app, db, str(claim["run_id"]), exclude=task_id)


def revoke_running(app: Any, db: Database, run_id: str, *,
                   exclude: str | None = None) -> None:
    """Revoke (terminate) the running attempts of a failed run; never raises."""
    try:
        ids = [i for i in coordinator.running_tasks(db, run_id) if i != exclude]
        if ids:
            app.control.revoke(ids, terminate=True)
    except Exception as exc:  # noqa: BLE001 - best effort: a retry adopts what still runs
        log.warning("run %s failed; could not revoke its running steps: %s", run_id, exc)


def report_revoked(app: Any, task_id: str, *, terminated: bool, expired: bool) -> None:
    """Tell the coordinator that a step task was revoked here (it will never report)."""
    reason = ("expired" if expired else
              "revoked and terminated" if terminated else "revoked before it ran")
    try:
        db = database_for(app)
        coordinator.with_retries(
            lambda: coordinator.abandon_task(db, task_id, f"step task {reason}"))
    except Exception as exc:  # noqa: BLE001 - a signal handler must not break the worker
        log.warning("step task %s was %s; could not report it: %s", task_id, reason, exc)
