"""The Python side of the coordinator: each function is one call into its stored functions.

The state machine itself is SQL (``sql/functions/workflows.sql``): starting a run, starting,
completing and failing a step task each happen in ONE transaction there, including the
dispatch of the steps that became ready (``swf.queue_send`` into the broker's queues).
This module only serialises arguments and names the transitions.

Events: every transition stores ``{"run_id", "step", "status"}`` (``step`` is ``null`` for
run-level events) as a message of the channel ``workflow_events`` of
:mod:`swf_celery.messaging` and NOTIFYs :data:`EVENTS_NOTIFY_CHANNEL` with its id and the
event: ids and states, never inputs or outputs. A NOTIFY is a hint, skipped while
PostgreSQL's notification queue is too full, and anyone who can connect may forge one:
readers take an event (:func:`parse_event`) as a reason to re-read the run.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors

from swf_celery.db import Database, ErrorMap, load_queries, retry_unavailable
from swf_celery.errors import (
    FlowNotFound,
    RunInputError,
    RunNotFound,
    RunStateError,
    TransactionConflict,
    UnknownSignal,
    WorkflowDefinitionError,
)
from swf_celery.messaging import channels

if TYPE_CHECKING:
    from swf_celery.workflows.definition import WorkflowDef

#: PostgreSQL channel of workflow events (NOTIFY channel of ``workflow_events``).
EVENTS_NOTIFY_CHANNEL = channels.resolve(channels.WORKFLOW_EVENTS).notify_channel
#: Run statuses after which nothing changes any more.
TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: Seconds a step outcome keeps being retried while the database is unreachable (a
#: restart); a pooled connection is waited for within the same budget.
REPORT_RETRY_SECONDS = 30.0

QUERIES = load_queries(__package__)
#: A NUL character in JSON text (an escaped backslash before "u0000" is not one).
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
#: What PostgreSQL refuses in a value (data exceptions, limits) means: cannot be stored.
_UNSTORABLE: ErrorMap = {psycopg.DataError: RunInputError,
                         pg_errors.ProgramLimitExceeded: RunInputError}
#: The form of an event's status (``completed``, ``in_progress``, ...).
_STATUS = re.compile(r"[a-z_]{1,32}")
#: Longest step name an event may carry.
_STEP_LIMIT = 255


def to_json(value: Any, what: str) -> str:
    """``value`` as JSON text; :class:`RunInputError` naming ``what`` when it cannot be."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RunInputError(f"{what} is not JSON-serialisable: {exc}") from None


def start_run(db: Database, workflow: WorkflowDef, run_input: Any, *,
              dynamic: bool = False, retry_of: str | None = None) -> str:
    """Record a run of ``workflow`` and dispatch its root steps; return the run id."""
    params = _start_params(workflow, run_input, dynamic=dynamic, retry_of=retry_of)
    try:
        return str(db.fetch_value(QUERIES["start_run"], params, errors={
            pg_errors.NoDataFound: FlowNotFound,
            pg_errors.UniqueViolation: WorkflowDefinitionError}))
    except WorkflowDefinitionError as exc:  # the slug is taken by the other kind of flow
        raise WorkflowDefinitionError(
            f"{exc}: give the workflow another __workflow_slug__") from None


def start_run_on(conn: psycopg.Connection[Any], workflow: WorkflowDef, run_input: Any) -> str:
    """:func:`start_run` on ``conn``, inside the caller's transaction (a beat's tick: the
    run and the tick's record commit together); errors are psycopg's."""
    row = conn.execute(QUERIES["start_run"], _start_params(workflow, run_input)).fetchone()
    return str(row[0]) if row else ""


def _start_params(workflow: WorkflowDef, run_input: Any, *, dynamic: bool = False,
                  retry_of: str | None = None) -> dict[str, Any]:
    steps_text = json.dumps(workflow.to_json(), sort_keys=True)
    return {"slug": workflow.slug, "steps": steps_text,
            "input": to_json(run_input, "the run input"), "dynamic": dynamic,
            "hash": hashlib.sha256(steps_text.encode()).hexdigest(), "retry_of": retry_of}


def start_task(db: Database, task_id: str) -> dict[str, Any] | None:
    """Mark a task started; its input and step, or ``None`` when it must not run."""
    result: dict[str, Any] | None = db.fetch_value(QUERIES["start_task"],
                                                   {"task_id": task_id})
    return result


def complete_task(db: Database, task_id: str, output: Any) -> str:
    """Report success; ``"completed"``, or ``"ignored"`` for a stale or duplicate report.

    An output that cannot be stored (not JSON, a NUL character, refused by PostgreSQL)
    fails the attempt instead, with that reason (returns that outcome).
    """
    try:
        text = to_json(output, "the step output")
    except RunInputError as exc:
        return fail_task(db, task_id, str(exc))
    if _NUL.search(text):
        return fail_task(db, task_id,
                         "the step output cannot be stored: it contains a NUL character "
                         "(\\u0000), which PostgreSQL's jsonb refuses")
    try:
        return str(db.fetch_value(QUERIES["complete_task"],
                                  {"task_id": task_id, "output": text},
                                  errors=_UNSTORABLE))
    except RunInputError as exc:
        return fail_task(db, task_id, f"the step output cannot be stored: {exc}")


def fail_task(db: Database, task_id: str, error: str) -> str:
    """Report a failed attempt; ``"retrying"``, ``"failed"`` or ``"ignored"``."""
    return str(db.fetch_value(QUERIES["fail_task"],
                              {"task_id": task_id, "error": _text(error)}))


def skip_task(db: Database, task_id: str, reason: str) -> str:
    """Report that a started attempt's step is skipped (its predicate said so)."""
    return str(db.fetch_value(QUERIES["skip_task"], {"task_id": task_id,
                                                     "reason": _text(reason)}))


def signal_run(db: Database, run_id: str, name: str, payload: Any) -> int:
    """Send signal ``name`` to a run (``swf.signal_run``); the waiting steps it started."""
    return int(db.fetch_value(QUERIES["signal_run"], {
        "run_id": run_id, "name": name, "payload": to_json(payload, "the signal payload")},
        errors={pg_errors.NoDataFound: RunNotFound,
                pg_errors.InvalidParameterValue: UnknownSignal,
                pg_errors.ObjectNotInPrerequisiteState: RunStateError}) or 0)


def abandon_task(db: Database, task_id: str, reason: str) -> str:
    """A revoked task ends its attempt: failed (and retried) in an active run, else
    cancelled; ``"ignored"`` when it was over already."""
    return str(db.fetch_value(QUERIES["abandon_task"],
                              {"task_id": task_id, "reason": _text(reason)}))


def running_tasks(db: Database, run_id: str) -> list[str]:
    """Celery task ids of the run's distributed attempts that are running now."""
    return list(db.fetch_value(QUERIES["running_tasks"], {"run_id": run_id}) or [])


def sweep_timeouts(db: Database) -> dict[str, Any] | None:
    """Fail every overdue attempt (one sweeper at a time): ``{"expired", "revoke"}``, or
    ``None`` when another process holds the sweep."""
    result: dict[str, Any] | None = db.fetch_value(QUERIES["sweep_timeouts"])
    return result


def cancel_run(db: Database, run_id: str, reason: str) -> list[str]:
    """Cancel a run that is not finished (``swf.cancel_run``); its running task ids.

    Raises :class:`~swf_celery.errors.SwfError` (a state error) when it has finished.
    """
    return list(db.fetch_value(QUERIES["cancel_run"],
                               {"run_id": run_id, "reason": reason, "force": False},
                               errors={pg_errors.ObjectNotInPrerequisiteState:
                                       RunStateError}) or [])


def step_result(returned: Any) -> tuple[bool, Any]:
    """What a step's return value means: ``(True, output)`` or ``(False, error text)``.

    The reference's tuples are understood: ``("ok", value)`` stores ``value``, and
    ``("error", reason)`` fails the attempt with ``reason`` (retried as a raise is). Only
    a 2-tuple whose first item is exactly ``"ok"`` or ``"error"`` is read so; anything else,
    lists included, is the output as it is. Raising stays the Python way to fail.
    """
    if isinstance(returned, tuple) and len(returned) == 2 and isinstance(returned[0], str):
        tag, value = returned
        if tag == "ok":
            return True, value
        if tag == "error":
            return False, value if isinstance(value, str) else repr(value)
    return True, returned


def describe(exc: BaseException) -> str:
    """An exception as the error text of a failed attempt."""
    return f"{type(exc).__name__}: {exc}"


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL: show it instead of losing the whole report.
    return value.replace("\x00", "\\x00")


def with_retries(call: Callable[[], Any], timeout: float | None = None) -> Any:
    """Call ``call``, retried while the database is unreachable or the transaction
    conflicts, for ``timeout`` seconds (default :data:`REPORT_RETRY_SECONDS`)."""
    deadline = time.monotonic() + (REPORT_RETRY_SECONDS if timeout is None else timeout)
    pause = 0.02
    while True:
        try:
            return retry_unavailable(call, timeout=max(0.0, deadline - time.monotonic()))
        except TransactionConflict:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(1.0, pause * 2)


def report_outcome(call: Callable[[Database, str, Any], str], db: Database,
                   task_id: str, value: Any, timeout: float | None = None) -> str:
    """Report an outcome with ``call`` (:func:`complete_task` or :func:`fail_task`),
    retried over a database restart or a transaction conflict for ``timeout`` seconds
    (default :data:`REPORT_RETRY_SECONDS`).

    Raises the last :class:`~swf_celery.errors.SwfError` when it never got through; the
    caller decides what then happens to the attempt.
    """
    return str(with_retries(lambda: call(db, task_id, value), timeout))


def claim_local_tasks(db: Database, run_id: str,
                      limit: int) -> list[tuple[str, dict[str, Any]]]:
    """Start up to ``limit`` due local tasks of a run: ``[(task_id, task), ...]``."""
    with db.connection() as conn:
        rows = conn.execute(QUERIES["claim_local_tasks"], {"run_id": run_id, "limit": limit})
        return [(tid, task) for tid, task in rows if task is not None]


def drive_run(db: Database, run_id: str, owner: str, lease_ms: int,
              take: bool = False) -> dict[str, Any] | None:
    """Take or renew the lease of a run's driver, then :func:`refresh_run`; a lease another
    driver holds (unless ``take``) returns ``{"held_by", "until"}`` instead."""
    state: dict[str, Any] | None = db.fetch_value(
        QUERIES["drive_run"], {"run_id": run_id, "owner": owner, "lease_ms": lease_ms,
                               "take": take})
    return state


def refresh_run(db: Database, run_id: str) -> dict[str, Any] | None:
    """Expire overdue attempts of a run, then return its status, output, error and the
    seconds until its next due event (``wake_in_ms``); ``None`` if there is no such run."""
    state: dict[str, Any] | None = db.fetch_value(QUERIES["run_tick"], {"run_id": run_id})
    return state


def expire_tasks(db: Database, run_id: str | None = None) -> int:
    """Fail started attempts past their timeout (of one run, or of all); how many."""
    return int(db.fetch_value(QUERIES["expire_tasks"], {"run_id": run_id}) or 0)


def parse_event(payload: str) -> dict[str, Any] | None:
    """A workflow event ``{"run_id", "step", "status"}`` from a NOTIFY payload, or None when
    the payload is not one.

    Any session that can connect may NOTIFY this channel, so an event is a hint to re-read
    the run, never a fact: only its form is checked here (a run id, a step name or null, a
    status word), so that a forged one cannot carry anything else to a page or a caller.
    """
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    run_id, step, status = event.get("run_id"), event.get("step"), event.get("status")
    if not isinstance(run_id, str) or not isinstance(status, str) \
            or not _STATUS.fullmatch(status):
        return None
    try:
        if str(uuid.UUID(run_id)) != run_id:
            return None
    except ValueError:
        return None
    if step is not None and (not isinstance(step, str) or len(step) > _STEP_LIMIT):
        return None
    return {"run_id": run_id, "step": step, "status": status}

