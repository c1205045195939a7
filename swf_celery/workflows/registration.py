"""What every Celery app gets once ``swf_celery`` is imported: the step runner and more.

``import swf_celery`` (and so also the ``swf://`` transport, a module of this package)
connects :func:`install` to the finalisation of every Celery app, past and future, the way
Celery registers its own built-in tasks. On each app it

- registers the step runner task ``swf_celery.step`` (:mod:`.worker_task`), so a worker
  whose app module imports only ``swf_celery`` and its tasks runs distributed steps;
- adds the worker bootstep :class:`~swf_celery.workflows.sweeper.TimeoutSweeper`, which
  fails timed-out attempts on a clock;
- reports revoked step tasks to the coordinator (Celery's ``task_revoked`` signal), so a
  revoked attempt ends instead of staying ``started``.

This module is imported by ``swf_celery/__init__.py`` and must stay cheap: the worker code
(database, coordinator) is imported only when a step runs or a worker starts.
"""

from __future__ import annotations

from typing import Any

# Celery's built-in tasks register through this hook (celery.app.builtins); the public
# ``shared_task`` does the same but imports celery.app on every ``import swf_celery``.
from celery import _state

from swf_celery.workflows.names import STEP_TASK_NAME


def _run_step(self: Any, ref: dict[str, Any]) -> None:
    """Run one step task of a workflow run (``ref``: run id, step, index, attempt)."""
    from swf_celery.workflows.worker_task import run_step

    run_step(self, ref)


def _on_revoked(sender: Any = None, request: Any = None, terminated: bool = False,
                expired: bool = False, **_: Any) -> None:
    if getattr(sender, "name", None) != STEP_TASK_NAME or request is None:
        return
    from swf_celery.workflows.worker_task import report_revoked

    report_revoked(sender.app, request.id, terminated=terminated, expired=expired)


def install(app: Any) -> None:
    """Register the step runner, the timeout sweeper and the revoke report with ``app``."""
    if STEP_TASK_NAME not in app.tasks:
        # acks_late + reject_on_worker_lost: a worker that dies mid-step gives the message
        # back, so the attempt runs again (at-least-once); duplicate reports are ignored.
        app.task(name=STEP_TASK_NAME, bind=True, shared=False, lazy=False, acks_late=True,
                 reject_on_worker_lost=True, ignore_result=True)(_run_step)
    from swf_celery.workflows.sweeper import TimeoutSweeper

    app.steps["worker"].add(TimeoutSweeper)
    from celery.signals import task_revoked

    task_revoked.connect(_on_revoked, weak=False, dispatch_uid="swf_celery.step.revoked")


_state.connect_on_app_finalize(install)
for _app in _state._get_active_apps():
    if _app.finalized:
        with _app._finalize_mutex:
            install(_app)
