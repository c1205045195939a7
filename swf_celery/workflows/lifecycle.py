"""The run lifecycle: status, listing, pause, resume, cancel and retry (the seed's names).

Each operation is one stored function (``sql/functions/lifecycle.sql``) that takes the run's
row lock, so it is serialised with the completions of the run's steps. The races and
their one outcome each:

- cancel while a step completes: whichever takes the lock first wins. Completion first:
  its output is kept, its dependents are dispatched and then cancelled (their messages
  removed). Cancel first: the late report is ignored; the output is not stored.
- pause while a step completes: the output is kept, its dependents become ``ready`` and
  wait for resume.
- two resumes at once: the first dispatches the held work, the second finds the run in
  progress and does nothing; nothing is dispatched twice.
- retry twice on the same failed run: one retry per run; the second call returns the run
  id the first created.
- retry while attempts of the failed run still run: the new run adopts them (their
  reports complete its steps), so no step has two live executions; with ``reset_all``
  they are cancelled and revoked with ``terminate=True`` instead.

Statuses: ``in_progress``, ``paused``, ``completed``, ``failed``, ``cancelled``. The seed
knows only in_progress/completed/failed, and every run reads as one of those three where
its forms are used: ``status.state`` (and ``state`` of a :class:`RunSummary`) is
``paused -> in_progress`` and ``cancelled -> failed`` (the seed marks a cancelled run
failed), and ``state, details = get_run_status(run_id, repo)`` unpacks as the seed's
``{:ok, status, details}``. Its ``"started"`` filter matches ``in_progress`` and ``paused``
here, and its ``"failed"`` filter matches ``failed`` and ``cancelled``; ``"cancelled"``
alone narrows to cancelled runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from psycopg import errors as pg_errors
from psycopg import sql

from swf_celery.db import Database, DatabaseHandle, ErrorMap, load_queries, resolve
from swf_celery.errors import ArgumentError, RunNotFound, RunStateError, StepFunctionError
from swf_celery.ops.canvas import revoke_tasks
from swf_celery.workflows import coordinator, definition, flows
from swf_celery.workflows.local_runner import (
    drive_in_background,
    known_workflow,
    local_functions,
    run_functions,
)

STATUSES = ("in_progress", "paused", "completed", "failed", "cancelled")
#: Each status as the seed's three (``completed | failed | in_progress``) read it.
REFERENCE_STATES = {"in_progress": "in_progress", "paused": "in_progress",
                    "completed": "completed", "failed": "failed", "cancelled": "failed"}
#: The seed's filter values, as written in its code, mapped to our statuses.
SEED_STATUSES = {"started": ("in_progress", "paused"), "failed": ("failed", "cancelled")}
ORDER_COLUMNS = {"inserted_at": "inserted_at", "updated_at": "updated_at",
                 "finished_at": "finished_at", "status": "status",
                 "workflow_slug": "flow_slug"}
DEFAULT_CANCEL_REASON = "User requested cancellation"
#: The SQLSTATEs the lifecycle functions raise, as our errors.
_RUN_ERRORS: ErrorMap = {pg_errors.NoDataFound: RunNotFound,
                         pg_errors.ObjectNotInPrerequisiteState: RunStateError}

QUERIES = load_queries(__package__)


@dataclass(frozen=True)
class StepStatus:
    """One step of a run as :func:`get_run_status` shows it."""

    name: str
    status: str
    depends_on: list[str]
    execution: str
    queue: str | None
    task_name: str | None
    resources: dict[str, Any]
    map_over: str | None
    task_count: int | None
    completed_tasks: int
    #: Attempts running past their timeout (the workers' sweep fails them next).
    overdue_tasks: int
    attempts: int
    error: str | None
    started_at: str | None
    completed_at: str | None


@dataclass(frozen=True)
class RunProgress:
    """What every view of a run shows: identity, status, progress, error, retry origin."""

    run_id: str
    workflow_slug: str
    status: str
    total_steps: int
    completed_steps: int
    percentage: float
    error: str | None
    failed_step: str | None
    retry_of: str | None

    @property
    def state(self) -> str:
        """The status as one of the seed's three: ``completed``, ``failed``, ``in_progress``
        (a paused run is in progress, a cancelled one failed)."""
        return REFERENCE_STATES[self.status]

    @property
    def details(self) -> dict[str, Any]:
        """The seed's progress details: ``total_steps``, ``completed_steps``, ``percentage``."""
        return {"total_steps": self.total_steps, "completed_steps": self.completed_steps,
                "percentage": self.percentage}


@dataclass(frozen=True)
class RunStatus(RunProgress):
    """A run's state (:func:`get_run_status`): progress, steps, input, output, retry links.

    Timestamps are ISO-8601 text, as the database's JSON gives them.
    """

    retried_by: str | None
    #: The run this one replays (:func:`replay`), and the replays of this one.
    replay_of: str | None
    replays: list[str]
    #: Whether some attempt runs past its timeout (the workers' sweep fails it next).
    overdue: bool
    input: Any
    output: Any
    inserted_at: str
    updated_at: str
    finished_at: str | None
    steps: list[StepStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO-8601 text), with ``state``."""
        return {**asdict(self), "state": self.state}

    def __iter__(self) -> Iterator[Any]:
        """``state, details = get_run_status(run_id, repo)``: the seed's
        ``{:ok, status, details}`` form (:attr:`state`, :attr:`details`)."""
        return iter((self.state, self.details))


@dataclass(frozen=True)
class RunSummary(RunProgress):
    """One row of :func:`list_workflow_runs`."""

    inserted_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def _run_uuid(run_id: Any) -> str:
    try:
        return str(uuid.UUID(str(run_id)))
    except ValueError:
        raise RunNotFound(f"run {run_id!r} does not exist (not a run id)") from None


def _call(db: Database, query: str, params: dict[str, Any]) -> Any:
    """Run one lifecycle function; its SQLSTATEs become RunNotFound / RunStateError."""
    return db.fetch_value(QUERIES[query], params, errors=_RUN_ERRORS)


def _percentage(done: int, total: int) -> float:
    return round(100.0 * done / total, 1) if total else 100.0


def get_run_status(run_id: str, repo: DatabaseHandle | None = None) -> RunStatus:
    """The run's status, progress and per-step states; :class:`RunNotFound` if unknown."""
    rid = _run_uuid(run_id)
    data = _call(resolve(repo), "run_status", {"run_id": rid})
    if data is None:
        raise RunNotFound(f"run {rid} does not exist")
    steps = [StepStatus(**s) for s in data.pop("steps")]
    return RunStatus(percentage=_percentage(data["completed_steps"], data["total_steps"]),
                     steps=steps, **data)


def list_workflow_runs(repo: DatabaseHandle | None = None, *,
                       status: str | Sequence[str] | None = None,
                       workflow_slug: str | None = None, limit: int = 100, offset: int = 0,
                       order_by: tuple[str, str] = ("desc", "inserted_at")
                       ) -> list[RunSummary]:
    """Runs, newest first by default; filters are validated, never spliced into SQL.

    ``status``: one status (or a list) of :data:`STATUSES`, or the seed's ``"started"``
    (in progress or paused). ``order_by``: ``(direction, column)`` as in the seed, with
    direction ``"asc"``/``"desc"`` and column one of :data:`ORDER_COLUMNS`.
    """
    statuses: list[str] | None = None
    if status is not None:
        wanted = [status] if isinstance(status, str) else list(status)
        statuses = []
        for value in wanted:
            if value in SEED_STATUSES:  # before STATUSES: the seed's "failed" is wider
                statuses.extend(SEED_STATUSES[value])
            elif value in STATUSES:
                statuses.append(value)
            else:
                raise ArgumentError(f"unknown run status {value!r}: use one of "
                               f"{list(STATUSES) + list(SEED_STATUSES)}")
    if not isinstance(order_by, (tuple, list)) or len(order_by) != 2:
        raise ArgumentError(f"order_by must be (direction, column), not {order_by!r}")
    direction, column = order_by
    if direction not in ("asc", "desc"):
        raise ArgumentError(f"order_by direction must be 'asc' or 'desc', not {direction!r}")
    if column not in ORDER_COLUMNS:
        raise ArgumentError(f"cannot order runs by {column!r}: use one of {sorted(ORDER_COLUMNS)}")
    for label, number in (("limit", limit), ("offset", offset)):
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ArgumentError(f"{label} must be an int >= 0, not {number!r}")
    query = sql.SQL(QUERIES["list_runs"]).format(order=sql.Identifier(ORDER_COLUMNS[column]),
                                             direction=sql.SQL(direction.upper()))
    params = {"statuses": statuses, "slug": workflow_slug, "limit": limit, "offset": offset}
    with resolve(repo).connection() as conn:
        rows = conn.execute(query, params).fetchall()
    return [RunSummary(rid, slug, st, total, done, _percentage(done, total), error, failed,
                       retry_of, ins, upd, fin)
            for rid, slug, st, total, done, error, failed, retry_of, ins, upd, fin in rows]


def pause_workflow_run(run_id: str, repo: DatabaseHandle | None = None) -> None:
    """Pause a run: no new step starts; running steps finish and their results are kept.

    Pausing a paused run does nothing; a finished run raises :class:`RunStateError`.
    """
    _call(resolve(repo), "pause_run", {"run_id": _run_uuid(run_id)})


def resume_workflow_run(run_id: str, repo: DatabaseHandle | None = None) -> None:
    """Resume a paused run: held and ready steps are dispatched (once, however often called)."""
    _call(resolve(repo), "resume_run", {"run_id": _run_uuid(run_id)})


def cancel_workflow_run(run_id: str, repo: DatabaseHandle | None = None, *,
                        reason: str = DEFAULT_CANCEL_REASON, force: bool = False,
                        app: Any = None, terminate: bool = True) -> None:
    """Cancel a run: queued messages removed, running Celery tasks revoked, status cancelled.

    A finished run raises :class:`RunStateError` unless ``force=True``. Running tasks are
    revoked through ``app`` (default: a Celery app on this database's ``swf://`` broker):
    a worker that has not started one drops it, and one already running is terminated (its
    pool process is killed and replaced; the worker goes on serving). ``terminate=False``
    lets a running task finish instead; its late report is ignored.
    """
    db = resolve(repo)
    running = _call(db, "cancel_run", {"run_id": _run_uuid(run_id), "reason": reason,
                                       "force": force})
    if running:
        revoke_tasks(db, list(running), app=app, terminate=terminate)


def signal(run_id: str, name: str, payload: Any = None,
           repo: DatabaseHandle | None = None) -> int:
    """Send the signal ``name`` (with a JSON ``payload``) to a run; return how many waiting
    steps it started.

    A step declared with ``wait_for=name`` starts only once the signal was sent, and finds
    ``payload`` in ``inputs[name]``. A signal sent before the step is reached is kept (one
    per name: a later one replaces it). :class:`RunNotFound` for an unknown run,
    :class:`~swf_celery.errors.UnknownSignal` when no step of the run waits for ``name``,
    :class:`RunStateError` when the run has finished.
    """
    if not isinstance(name, str) or not name:
        raise ArgumentError(f"a signal name must be non-empty text, not {name!r}")
    return coordinator.signal_run(resolve(repo), _run_uuid(run_id), name, payload)


def replay(run_id: str, from_step: str, input: Any = None,
           repo: DatabaseHandle | None = None, *, workflow: Any = None,
           step_functions: Mapping[str, Any] | None = None) -> str:
    """Start a new run replaying a finished one from ``from_step``; return its id.

    The new run reuses the outputs of every step not downstream of ``from_step`` (the
    completed items of map steps included) and runs ``from_step`` and every step after it
    again, on ``input`` when given (``None``: the old run's input). Its ``replay_of`` names
    the old run (shown by ``get_run_status``, the CLI and the console). Local steps run in
    this process, found as for :func:`retry_failed_workflow`.
    """
    db = resolve(repo)
    rid = _run_uuid(run_id)
    row = db.fetch_one(QUERIES["run_local_steps"], {"run_id": rid})
    if row is None:
        raise RunNotFound(f"run {rid} does not exist")
    slug, local_steps = row[0], list(row[1])
    functions = _local_functions(db, rid, slug, local_steps, workflow, step_functions)
    new_id = str(db.fetch_value(QUERIES["replay_run"], {
        "run_id": rid, "step": from_step, "new_input": input is not None,
        "input": coordinator.to_json(input, "the run input")},
        errors={**_RUN_ERRORS, pg_errors.InvalidParameterValue: ArgumentError}))
    if functions:
        drive_in_background(db, functions, new_id, None)
    return new_id


def retry_failed_workflow(run_id: str, repo: DatabaseHandle | None = None, *,
                          skip_completed: bool = True, reset_all: bool = False,
                          workflow: Any = None, step_functions: Mapping[str, Any] | None = None,
                          app: Any = None) -> str:
    """Start a new run retrying a failed (or cancelled) one; return the new run id.

    Unless ``reset_all`` (or ``skip_completed=False``), every completed step and every
    completed item of a map step is reused; only failed or never-run work runs again.
    Attempts of the old run that are still running are adopted by the new run (no step
    runs twice at once); with ``reset_all`` they are revoked with ``terminate=True``
    (through ``app``, default: a Celery app on this database's broker). The new run's
    ``retry_of`` names the old one. Calling it again for the same run returns the same
    new run.

    Local steps run in this process, driven by a background thread until the new run ends
    (:meth:`~swf_celery.workflows.executor.Executor.wait` blocks for it): their functions
    are those of ``workflow`` (the class or
    :class:`~swf_celery.workflows.definition.WorkflowDef`) or ``step_functions`` when given,
    else the workflow a run of this process started (known by its slug), else imported from
    the paths the run recorded. When one cannot be imported (a lambda, a function defined
    inside another), :class:`StepFunctionError` names the step and why, and no run is
    created.
    """
    db = resolve(repo)
    rid = _run_uuid(run_id)
    row = db.fetch_one(QUERIES["run_local_steps"], {"run_id": rid})
    if row is None:
        raise RunNotFound(f"run {rid} does not exist")
    slug, local_steps = row[0], list(row[1])
    functions = _local_functions(db, rid, slug, local_steps, workflow, step_functions)
    result = _call(db, "retry_run", {"run_id": rid,
                                     "reuse": bool(skip_completed and not reset_all)})
    if result["revoke"]:
        revoke_tasks(db, list(result["revoke"]), app=app, terminate=True)
    new_id = str(result["run_id"])
    if functions:
        drive_in_background(db, functions, new_id, None)
    return new_id


def _local_functions(db: Database, run_id: str, slug: str, local_steps: list[str],
                     workflow: Any, step_functions: Mapping[str, Any] | None
                     ) -> definition.WorkflowDef | dict[str, Any]:
    """The workflow (or ``{step: function}``) running the local steps of a retry; empty
    when there are none."""
    if not local_steps and workflow is None and step_functions is None:
        return {}
    if workflow is not None:
        return _checked(run_id, local_steps, definition.load(workflow))
    if step_functions is not None:
        return _checked(run_id, local_steps, flows.load_dynamic(slug, step_functions, db))
    known = known_workflow(slug)
    if known is not None:
        return _checked(run_id, local_steps, known)
    try:
        functions = run_functions(db, run_id)
    except StepFunctionError as exc:
        raise StepFunctionError(
            f"{exc}: pass workflow=<the workflow class> (or step_functions={{step: "
            "function} for a dynamic or goal flow)") from None
    return _checked(run_id, local_steps, functions)


def _checked(run_id: str, local_steps: list[str],
             given: definition.WorkflowDef | dict[str, Any]
             ) -> definition.WorkflowDef | dict[str, Any]:
    functions = local_functions(given) if isinstance(given, definition.WorkflowDef) else given
    missing = [name for name in local_steps if functions.get(name) is None]
    if missing:
        raise StepFunctionError(f"run {run_id}: no function given for local step(s) {missing}")
    return given
