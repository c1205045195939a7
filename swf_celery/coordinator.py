"""The Python side of the coordinator: each function is one call into its stored functions.

The state machine itself is SQL (``sql/0004_workflows.sql``): starting a run, starting,
completing and failing a step task each happen in ONE transaction there, including the
dispatch of the steps that became ready (``swf.queue_send`` into the broker's queues).
This module only serialises arguments and names the transitions.

Events: every transition NOTIFYs :data:`EVENTS_CHANNEL` with ``{"run_id", "step",
"status"}`` (``step`` is ``null`` for run-level events).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from psycopg import errors as pg_errors

from swf_celery import queries
from swf_celery.db import Database
from swf_celery.definition import WorkflowDef
from swf_celery.errors import DatabaseError, FlowNotFound, RunInputError, WorkflowDefinitionError

#: PostgreSQL channel of workflow events.
EVENTS_CHANNEL = "swf_workflow_events"
#: Run statuses after which nothing changes any more.
TERMINAL = frozenset({"completed", "failed", "cancelled"})

_Q = queries.load("swf_celery", "coordinator.sql")


def _one(db: Database, query: str, params: Mapping[str, Any]) -> Any:
    """The first column of the one row of a transition (one ``SELECT swf.fn(...)``)."""
    with db.single_statement() as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def to_json(value: Any, what: str) -> str:
    """``value`` as JSON text; :class:`RunInputError` naming ``what`` when it cannot be."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RunInputError(f"{what} is not JSON-serialisable: {exc}") from None


def start_run(db: Database, workflow: WorkflowDef, run_input: Any, *, dynamic: bool = False,
              retry_of: str | None = None) -> str:
    """Record a run of ``workflow`` and dispatch its root steps; return the run id."""
    steps = workflow.to_json()
    steps_text = json.dumps(steps, sort_keys=True)
    params = {"slug": workflow.slug, "steps": steps_text,
              "input": to_json(run_input, "the run input"), "dynamic": dynamic,
              "hash": hashlib.sha256(steps_text.encode()).hexdigest(), "retry_of": retry_of}
    try:
        return str(_one(db, _Q["start_run"], params))
    except DatabaseError as exc:
        cause = exc.__cause__
        if isinstance(cause, pg_errors.NoDataFound):
            raise FlowNotFound(cause.diag.message_primary or str(cause)) from None
        if isinstance(cause, pg_errors.UniqueViolation):  # slug taken by the other kind
            raise WorkflowDefinitionError(
                f"{cause.diag.message_primary}: give the workflow another "
                "__workflow_slug__") from None
        raise


def start_task(db: Database, task_id: str) -> dict[str, Any] | None:
    """Mark a task started; its input and step, or ``None`` when it must not run."""
    result: dict[str, Any] | None = _one(db, _Q["start_task"], {"task_id": task_id})
    return result


def complete_task(db: Database, task_id: str, output: Any) -> str:
    """Report success; ``"completed"``, or ``"ignored"`` for a stale or duplicate report.

    An output that is not JSON fails the attempt instead (returns that outcome).
    """
    try:
        text = to_json(output, "the step output")
    except RunInputError as exc:
        return fail_task(db, task_id, str(exc))
    return str(_one(db, _Q["complete_task"], {"task_id": task_id, "output": text}))


def fail_task(db: Database, task_id: str, error: str) -> str:
    """Report a failed attempt; ``"retrying"``, ``"failed"`` or ``"ignored"``."""
    return str(_one(db, _Q["fail_task"], {"task_id": task_id, "error": error}))


def claim_local_tasks(db: Database, run_id: str, limit: int) -> list[tuple[str, dict[str, Any]]]:
    """Start up to ``limit`` due local tasks of a run: ``[(task_id, task), ...]``."""
    with db.connection() as conn:
        rows = conn.execute(_Q["claim_local_tasks"], {"run_id": run_id, "limit": limit})
        return [(tid, task) for tid, task in rows if task is not None]


def tick(db: Database, run_id: str) -> dict[str, Any] | None:
    """Expire overdue attempts of a run; its status, output, error and next wake-up."""
    state: dict[str, Any] | None = _one(db, _Q["run_tick"], {"run_id": run_id})
    return state


def expire_tasks(db: Database, run_id: str | None = None) -> int:
    """Fail started attempts past their timeout (of one run, or of all); how many."""
    return int(_one(db, _Q["expire_tasks"], {"run_id": run_id}) or 0)


def listen_query() -> str:
    """The LISTEN statement for workflow events."""
    return _Q["listen"]
