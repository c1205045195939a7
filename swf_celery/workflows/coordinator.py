"""The Python side of the coordinator: each function is one call into its stored functions.

The state machine itself is SQL (``sql/0004_workflows.sql``): starting a run, starting,
completing and failing a step task each happen in ONE transaction there, including the
dispatch of the steps that became ready (``swf.queue_send`` into the broker's queues).
This module only serialises arguments and names the transitions.

Events: every transition NOTIFYs :data:`EVENTS_NOTIFY_CHANNEL` (the channel
``workflow_events`` of :mod:`swf_celery.messaging`) with ``{"run_id", "step", "status"}``
(``step`` is ``null`` for run-level events).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from psycopg import errors as pg_errors
from psycopg import sql

from swf_celery import db
from swf_celery.errors import FlowNotFound, RunInputError, WorkflowDefinitionError
from swf_celery.messaging import channels

if TYPE_CHECKING:
    from swf_celery.workflows.definition import WorkflowDef

#: The Celery task that runs distributed steps on workers (:mod:`.worker_task`); the
#: coordinator's step messages (``swf._step_message``) name it.
STEP_TASK_NAME = "swf_celery.step"
#: PostgreSQL channel of workflow events (NOTIFY channel of ``workflow_events``).
EVENTS_NOTIFY_CHANNEL = channels.resolve(channels.WORKFLOW_EVENTS).notify_channel
#: Run statuses after which nothing changes any more.
TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: Seconds a step outcome keeps being retried while the database is unreachable (a
#: restart); a pooled connection is waited for within the same budget.
REPORT_RETRY_SECONDS = 30.0

QUERIES = db.load_queries(__package__)


def to_json(value: Any, what: str) -> str:
    """``value`` as JSON text; :class:`RunInputError` naming ``what`` when it cannot be."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RunInputError(f"{what} is not JSON-serialisable: {exc}") from None


def start_run(database: db.Database, workflow: WorkflowDef, run_input: Any, *,
              dynamic: bool = False, retry_of: str | None = None) -> str:
    """Record a run of ``workflow`` and dispatch its root steps; return the run id."""
    steps_text = json.dumps(workflow.to_json(), sort_keys=True)
    params = {"slug": workflow.slug, "steps": steps_text,
              "input": to_json(run_input, "the run input"), "dynamic": dynamic,
              "hash": hashlib.sha256(steps_text.encode()).hexdigest(), "retry_of": retry_of}
    try:
        return str(database.fetch_value(QUERIES["start_run"], params, errors={
            pg_errors.NoDataFound: FlowNotFound,
            pg_errors.UniqueViolation: WorkflowDefinitionError}))
    except WorkflowDefinitionError as exc:  # the slug is taken by the other kind of flow
        raise WorkflowDefinitionError(
            f"{exc}: give the workflow another __workflow_slug__") from None


def start_task(database: db.Database, task_id: str) -> dict[str, Any] | None:
    """Mark a task started; its input and step, or ``None`` when it must not run."""
    result: dict[str, Any] | None = database.fetch_value(QUERIES["start_task"],
                                                         {"task_id": task_id})
    return result


def complete_task(database: db.Database, task_id: str, output: Any) -> str:
    """Report success; ``"completed"``, or ``"ignored"`` for a stale or duplicate report.

    An output that is not JSON fails the attempt instead (returns that outcome).
    """
    try:
        text = to_json(output, "the step output")
    except RunInputError as exc:
        return fail_task(database, task_id, str(exc))
    return str(database.fetch_value(QUERIES["complete_task"],
                                     {"task_id": task_id, "output": text}))


def fail_task(database: db.Database, task_id: str, error: str) -> str:
    """Report a failed attempt; ``"retrying"``, ``"failed"`` or ``"ignored"``."""
    return str(database.fetch_value(QUERIES["fail_task"], {"task_id": task_id, "error": error}))


def report_outcome(call: Callable[[db.Database, str, Any], str], database: db.Database,
                   task_id: str, value: Any) -> str:
    """Report an outcome with ``call`` (:func:`complete_task` or :func:`fail_task`),
    retried over a database restart for :data:`REPORT_RETRY_SECONDS`.

    Raises :class:`~swf_celery.errors.DatabaseUnavailable` when it never got through; the
    caller decides what then happens to the attempt.
    """
    return db.retry_unavailable(lambda: call(database, task_id, value),
                                timeout=REPORT_RETRY_SECONDS)


def claim_local_tasks(database: db.Database, run_id: str,
                      limit: int) -> list[tuple[str, dict[str, Any]]]:
    """Start up to ``limit`` due local tasks of a run: ``[(task_id, task), ...]``."""
    with database.connection() as conn:
        rows = conn.execute(QUERIES["claim_local_tasks"], {"run_id": run_id, "limit": limit})
        return [(tid, task) for tid, task in rows if task is not None]


def refresh_run(database: db.Database, run_id: str) -> dict[str, Any] | None:
    """Expire overdue attempts of a run, then return its status, output, error and the
    seconds until its next due event (``wake_in_ms``); ``None`` if there is no such run."""
    state: dict[str, Any] | None = database.fetch_value(QUERIES["run_tick"], {"run_id": run_id})
    return state


def expire_tasks(database: db.Database, run_id: str | None = None) -> int:
    """Fail started attempts past their timeout (of one run, or of all); how many."""
    return int(database.fetch_value(QUERIES["expire_tasks"], {"run_id": run_id}) or 0)


def listen_statement() -> sql.Composed:
    """The LISTEN statement for workflow events."""
    return sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_NOTIFY_CHANNEL))

