"""Goal-driven workflows: a decomposer turns a goal into a task graph that runs as a flow.

The seed's ``Orchestrator`` and ``WorkflowComposer``:

- :meth:`Orchestrator.decompose_goal` asks a decomposer (any ``goal -> task list``
  callable, see :mod:`swf_celery.goals.decomposers`) for tasks, validates them, and persists
  the graph in ``swf.task_graphs``; it returns ``{id, goal, tasks, decomposed_at, ...}``.
- :meth:`Orchestrator.execute_goal` decomposes (or loads a graph already decomposed, by
  id), builds a dynamic flow with one step per leaf task, and runs it.
- :meth:`WorkflowComposer.compose_from_goal` is the one-call form.

Hierarchical tasks (``subtasks``) are flattened by :func:`swf_celery.workflows.dag.flatten`: a
subtask's id is qualified by its parent's (``prepare.clean``), it inherits the parent's
dependencies, and whatever depends on the parent waits for all of the parent's leaves.
Checked before anything runs: the answer's shape, duplicate ids, unknown dependencies,
cycles (named), an empty graph, nesting deeper than ``max_depth`` (default 5), and, at
execution, a leaf task with no step function.

Step functions are looked up for each leaf by, in order: its qualified id, the task's
``step`` key, its own (unqualified) id, then ``"*"`` (a default for every task). A step
receives the usual mapping ``{"run": run_input, <dependency>: <output>, ...}``; the run
input is ``{"goal", "graph_id", "tasks": {id: description}, "input": <caller's input>}``.
A step function that is not a Celery task (a local step) also finds its own task in
``inputs["task"]`` (``{"id", "description"}``), so one ``"*"`` function tells tasks apart.

``timeout`` behaves as in :meth:`~swf_celery.workflows.executor.Executor.execute`: past
it the run is cancelled (the graph marked ``failed``) and
:class:`~swf_celery.errors.WorkflowTimeout` raised; ``on_timeout="keep"`` leaves it running.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from swf_celery.db import Database, DatabaseHandle, load_queries, resolve
from swf_celery.errors import (
    FlowNotFound,
    GoalError,
    RunStateError,
    StepFunctionError,
    SwfError,
    UnknownSignal,
    WorkflowFailed,
    WorkflowTimeout,
)
from swf_celery.goals.decomposers import PLANNER_OPTIONS, PlannerPolicy, run_decomposer
from swf_celery.workflows import dag
from swf_celery.workflows.executor import (
    DEFAULT_TIMEOUT_MS,
    Executor,
    cancel_on_timeout,
    check_on_timeout,
)
from swf_celery.workflows.flows import FlowBuilder
from swf_celery.workflows.imports import TaskBound
from swf_celery.workflows.lifecycle import signal
from swf_celery.workflows.steps import is_task

QUERIES = load_queries(__package__)
DEFAULT_MAX_DEPTH = 5
#: The signal a run waiting for its graph's approval waits for (``require_approval="wait"``).
APPROVAL_SIGNAL = "approved"
_GATED = "-approval"


@dataclass(frozen=True)
class GoalResult:
    """A finished goal run: the task graph, the run and its output ``{leaf: output}``."""

    graph_id: str
    run_id: str
    output: dict[str, Any]


def _graph_row(row: tuple[Any, ...]) -> dict[str, Any]:
    (graph_id, goal, tasks, flat, status, workflow_id, run_id, decomposed_at,
     approved_at) = row
    return {"id": graph_id, "goal": goal, "tasks": tasks, "flat_tasks": flat,
            "status": status, "workflow_id": workflow_id, "last_run_id": run_id,
            "decomposed_at": decomposed_at, "approved_at": approved_at}


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True


class Orchestrator:
    """Decompose goals into persisted task graphs and execute them (the seed's API)."""

    @staticmethod
    def decompose_goal(goal: str, decomposer: Callable[[str], Any],
                       repo: DatabaseHandle | None = None, *, max_depth: int = DEFAULT_MAX_DEPTH,
                       allowed_options: Collection[str] | None = None,
                       allowed_queues: Collection[str] | None = None) -> dict[str, Any]:
        """Ask ``decomposer`` for tasks, validate them, persist the graph and return it.

        The planner decides the tasks and their dependencies; which step options it may set
        is the caller's choice: ``allowed_options`` (default: ``resources`` only — never
        ``queue``, ``execution``, ``max_attempts``, ``retry_delay``, ``timeout``) and
        ``allowed_queues`` (the queues a task may name; giving it allows ``queue``). A task
        outside that raises :class:`~swf_celery.errors.DecomposerError` naming the task and
        the field, and nothing is stored.
        """
        if not isinstance(goal, str) or not goal.strip():
            raise GoalError("goal must be non-empty text")
        policy = PlannerPolicy.of(allowed_options, allowed_queues)
        tasks = run_decomposer(decomposer, goal)
        policy.check(tasks)
        flat = _flatten(tasks, max_depth)
        with resolve(repo).connection() as conn:
            graph_id, decomposed_at = conn.execute(QUERIES["insert_graph"], {
                "goal": goal, "tasks": json.dumps(tasks), "flat": json.dumps(flat),
            }).fetchone()  # type: ignore[misc]
        return {"id": graph_id, "goal": goal, "tasks": tasks, "flat_tasks": flat,
                "status": "decomposed", "decomposed_at": decomposed_at,
                "approved_at": None, "workflow_id": None, "last_run_id": None}

    @staticmethod
    def get_task_graph(graph_id: str, repo: DatabaseHandle | None = None) -> dict[str, Any]:
        """A persisted task graph by id; :class:`GoalError` if there is none."""
        if not isinstance(graph_id, str) or not _is_uuid(graph_id):
            raise GoalError(f"task graph id {graph_id!r} is not a UUID")
        with resolve(repo).connection() as conn:
            row = conn.execute(QUERIES["get_graph"], {"id": graph_id}).fetchone()
        if row is None:
            raise GoalError(f"no task graph with id {graph_id}")
        return _graph_row(row)

    @staticmethod
    def list_task_graphs(repo: DatabaseHandle | None = None, *, limit: int = 100,
                         offset: int = 0) -> list[dict[str, Any]]:
        """Persisted task graphs, newest first."""
        if limit < 1 or offset < 0:
            raise GoalError("limit must be >= 1 and offset >= 0")
        with resolve(repo).connection() as conn:
            rows = conn.execute(QUERIES["list_graphs"], {"limit": limit, "offset": offset})
            return [_graph_row(r) for r in rows]

    @staticmethod
    def approve_task_graph(graph_id: str, repo: DatabaseHandle | None = None) -> dict[str, Any]:
        """Record approval of a previewed graph (``execute_goal(require_approval=True)``);
        a run of it waiting for approval (``require_approval="wait"``) gets the signal
        :data:`APPROVAL_SIGNAL` and starts."""
        graph = Orchestrator.get_task_graph(graph_id, repo)
        with resolve(repo).connection() as conn:
            conn.execute(QUERIES["approve_graph"], {"id": graph_id})
        run_id = graph["last_run_id"]
        if run_id is not None and str(graph["workflow_id"] or "").endswith(_GATED):
            try:
                signal(str(run_id), APPROVAL_SIGNAL, {"graph_id": graph_id}, repo)
            except (UnknownSignal, RunStateError):  # that run ended, or started already
                pass
        return Orchestrator.get_task_graph(graph_id, repo)

    @staticmethod
    def execute_goal(goal: str | Mapping[str, Any], decomposer: Callable[[str], Any] | None,
                     step_functions: Mapping[str, Any], repo: DatabaseHandle | None = None, *,
                     input: Any = None, timeout: int | None = DEFAULT_TIMEOUT_MS,
                     require_approval: bool | str = False,
                     max_depth: int = DEFAULT_MAX_DEPTH,
                     resource_queues: Mapping[str, str] | None = None,
                     allowed_options: Collection[str] | None = None,
                     allowed_queues: Collection[str] | None = None,
                     on_timeout: str = "cancel", app: Any = None) -> GoalResult:
        """Decompose (unless ``goal`` is a graph or a graph id), build a flow, run it.

        ``goal`` is goal text, a graph returned by :meth:`decompose_goal`, or the id of
        one; the last two run without asking the decomposer again. Blocks until the run
        ends (``timeout`` in ms: past it the run is cancelled, unless
        ``on_timeout="keep"``, and :class:`~swf_celery.errors.WorkflowTimeout` is raised); a
        failed run raises :class:`~swf_celery.errors.WorkflowFailed`. ``allowed_options`` and
        ``allowed_queues`` as for :meth:`decompose_goal`; a stored graph is checked
        against them again before anything is built or run. ``require_approval=True``
        refuses a graph nobody approved; ``"wait"`` starts the run at once with its first
        tasks waiting (durably, holding nothing) for the signal :data:`APPROVAL_SIGNAL`,
        which :meth:`approve_task_graph` sends.
        """
        db = resolve(repo)
        check_on_timeout(on_timeout)
        policy = PlannerPolicy.of(allowed_options, allowed_queues)
        graph = _load_or_decompose(goal, decomposer, db, max_depth, policy)
        policy.check(graph["tasks"])
        if require_approval not in (False, True, "wait"):
            raise GoalError(f"require_approval must be True, False or 'wait', not "
                            f"{require_approval!r}")
        gated = require_approval == "wait" and graph["approved_at"] is None
        if require_approval is True and graph["approved_at"] is None:
            raise GoalError(f"task graph {graph['id']} is not approved: call "
                            "Orchestrator.approve_task_graph first (or pass "
                            "require_approval='wait' to start a run that waits for it)")
        functions = _bind_functions(graph["flat_tasks"], step_functions)
        workflow_id = _ensure_flow(graph, db, gated)
        run_input = {"goal": graph["goal"], "graph_id": graph["id"],
                     "tasks": {t["id"]: t.get("description", "")
                               for t in graph["flat_tasks"]},
                     "input": input}
        run_id = Executor.start_dynamic(workflow_id, run_input, functions, db,
                                        resource_queues=resource_queues)
        with db.connection() as conn:
            conn.execute(QUERIES["mark_running"], {"id": graph["id"], "workflow_id": workflow_id,
                                              "run_id": run_id})
        if gated and Orchestrator.get_task_graph(graph["id"], db)["approved_at"] is not None:
            # approved between the start and the line above: its signal found no run yet
            Orchestrator.approve_task_graph(graph["id"], db)
        try:
            result = Executor.wait(run_id, db, timeout)
        except WorkflowTimeout:
            if on_timeout == "keep":
                raise
            error = cancel_on_timeout(db, run_id, timeout, app)
            _mark_finished(db, graph["id"], run_id, "failed")
            raise error from None
        except WorkflowFailed:
            _mark_finished(db, graph["id"], run_id, "failed")
            raise
        _mark_finished(db, graph["id"], run_id, "completed")
        return GoalResult(graph["id"], run_id, result.output)


class WorkflowComposer:
    """The one-call form: goal -> task graph -> flow -> result."""

    @staticmethod
    def compose_from_goal(goal: str, decomposer: Callable[[str], Any],
                          step_functions: Mapping[str, Any], repo: DatabaseHandle | None = None,
                          **options: Any) -> GoalResult:
        """Decompose ``goal``, persist the graph, run it and return its result."""
        return Orchestrator.execute_goal(goal, decomposer, step_functions, repo, **options)


def _flatten(tasks: list[dict[str, Any]], max_depth: int) -> list[dict[str, Any]]:
    if not tasks:
        raise GoalError("the decomposer returned an empty task list: nothing to run")
    # dag's own errors (DuplicateStepError, UnknownDependencyError, CycleError naming the
    # cycle, depth) are raised as they are: they already name the qualified task ids.
    return dag.flatten(tasks, max_depth=max_depth)


def _load_or_decompose(goal: str | Mapping[str, Any], decomposer: Any, db: Database,
                       max_depth: int, policy: PlannerPolicy) -> dict[str, Any]:
    if isinstance(goal, Mapping):
        return Orchestrator.get_task_graph(str(goal.get("id")), db)
    if isinstance(goal, str) and _is_uuid(goal.strip()):
        return Orchestrator.get_task_graph(goal.strip(), db)
    if decomposer is None:
        raise GoalError("a decomposer is needed to run a goal that is not decomposed yet")
    return Orchestrator.decompose_goal(goal, decomposer, db, max_depth=max_depth,
                                       allowed_options=policy.allowed_options,
                                       allowed_queues=policy.allowed_queues)


def _bind_functions(flat: list[dict[str, Any]],
                    step_functions: Mapping[str, Any]) -> dict[str, Any]:
    bound: dict[str, Any] = {}
    missing: list[str] = []
    for task in flat:
        qid = task["id"]
        short = qid.rsplit(dag.QUALIFIER, 1)[-1]
        for key in (qid, task.get("step"), short, "*"):
            if key is not None and key in step_functions:
                function = step_functions[key]
                # A local step is told its task (a Celery task runs on a worker as it is).
                bound[qid] = function if is_task(getattr(function, "__wrapped__", function)) \
                    else TaskBound(function, qid, str(task.get("description", "")))
                break
        else:
            missing.append(qid)
    if missing:
        raise StepFunctionError(
            f"no step function for task(s) {missing}: map them by id, by the task's 'step' "
            "key, or give a '*' default")
    return bound


def _ensure_flow(graph: dict[str, Any], db: Database, gated: bool = False) -> str:
    # A gated flow (its root tasks wait for the approval signal) is a flow of its own.
    workflow_id = f"goal-{graph['id']}" + (_GATED if gated else "")
    try:
        FlowBuilder.get_flow(workflow_id, db)
        return workflow_id
    except FlowNotFound:
        pass
    FlowBuilder.create_flow(workflow_id, db)
    for task in graph["flat_tasks"]:
        options = {k: task[k] for k in PLANNER_OPTIONS if task.get(k) is not None}
        if gated and not task["depends_on"]:
            options["wait_for"] = APPROVAL_SIGNAL
        FlowBuilder.add_step(workflow_id, task["id"], task["depends_on"], db, **options)
    return workflow_id


def _mark_finished(db: Database, graph_id: str, run_id: str, status: str) -> None:
    try:
        with db.connection() as conn:
            conn.execute(QUERIES["mark_finished"], {"id": graph_id, "run_id": run_id,
                                               "status": status})
    except SwfError:  # the run's own outcome matters more than this bookkeeping
        pass

