"""Workflow definitions: loading a class, module or builder output into a validated graph.

A workflow is any of

- a class (or module) whose attributes are step-marked functions or Celery tasks; the
  attribute name is the step name, definition order is kept::

      class Pipeline:
          fetch = fetch_task                       # @swf_celery.step() on the task
          train = swf_celery.step(depends_on=["fetch"], queue="gpu_workers")(train_task)

- a class with the seed's ``__workflow_steps__()`` returning ``(name, function,
  {"depends_on": [...], "queue": ..., ...})`` entries (the options dict may be omitted);
- a :class:`WorkflowDef` built by code (dynamic flows do this).

Step contract: the function receives ONE mapping ``{"run": <run input>, "<dependency>":
<its output>, ...}`` (a map step also gets ``"item"`` and ``"index"``) and returns a
JSON-serialisable output; raising fails the attempt. The reference's tuples are understood
too: ``("ok", value)`` outputs ``value`` and ``("error", reason)`` fails the attempt
(:func:`~swf_celery.workflows.coordinator.step_result`). The run's result is
``{<leaf step>: <its output>}``.

Loading validates everything (see :mod:`swf_celery.workflows.dag`) before the database is
touched; step options are checked by :mod:`swf_celery.workflows.steps`.
"""

from __future__ import annotations

import datetime as dt
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from swf_celery.errors import StepFunctionError, WorkflowDefinitionError
from swf_celery.workflows import dag, imports
from swf_celery.workflows.names import STEP_TASK_NAME
from swf_celery.workflows.steps import (
    OPTION_NAMES,
    Step,
    StepOptions,
    callable_name,
    condition_of,
    is_task,
    parse_options,
    step_options,
)

#: Celery setting holding the default resource -> queue map.
RESOURCE_QUEUES_SETTING = "swf_resource_queues"


@dataclass(frozen=True)
class StepDef:
    """One validated step: what runs, where, and with which limits.

    ``retry_delay`` and ``timeout`` are seconds. ``task_name`` is the Celery task of a
    distributed step; ``queue`` is where its messages go (``None`` for local steps).
    """

    name: str
    depends_on: tuple[str, ...]
    function: Callable[..., Any] | None
    execution: str
    task_name: str | None
    queue: str | None
    max_attempts: int
    retry_delay: float
    timeout: float | None
    resources: Mapping[str, Any]
    map_over: str | None
    #: ``("run_if" | "skip_if", predicate)`` or ``None``.
    condition: tuple[str, Callable[[Any], Any]] | None = None
    run_on_skip: bool = False
    on_exhausted: str = "fail"
    wait_for: str | None = None
    wait_until: dt.datetime | float | None = None

    def to_json(self, dependents: Sequence[str]) -> dict[str, Any]:
        """The step as the coordinator's ``swf.start_run`` expects it."""
        return {
            "name": self.name, "depends_on": list(self.depends_on),
            "dependents": list(dependents), "execution": self.execution,
            "task_name": self.task_name, "queue": self.queue,
            "max_attempts": self.max_attempts,
            "retry_delay_ms": int(round(self.retry_delay * 1000)),
            "timeout_ms": None if self.timeout is None else int(math.ceil(self.timeout * 1000)),
            "resources": dict(self.resources), "map_over": self.map_over,
            "function_ref": (imports.reference(self.function)
                             if self.execution == "local" else None),
            "condition": (None if self.condition is None
                          else {self.condition[0]: imports.reference(self.condition[1])}),
            "run_on_skip": self.run_on_skip, "on_exhausted": self.on_exhausted,
            "wait_for": self.wait_for,
            "wait_until": (self.wait_until.isoformat()
                           if isinstance(self.wait_until, dt.datetime) else None),
            "wait_seconds": (self.wait_until if isinstance(self.wait_until, float) else None),
        }


@dataclass(frozen=True)
class WorkflowDef:
    """A validated workflow: its slug and its steps in definition order."""

    slug: str
    steps: tuple[StepDef, ...]

    def step(self, name: str) -> StepDef:
        """The step called ``name``; :class:`StepFunctionError` if there is none."""
        for s in self.steps:
            if s.name == name:
                return s
        raise StepFunctionError(f"workflow {self.slug!r} has no step {name!r}")

    @property
    def graph(self) -> dict[str, list[str]]:
        """``{step: [dependencies]}``."""
        return {s.name: list(s.depends_on) for s in self.steps}

    @property
    def has_local_steps(self) -> bool:
        """Whether some step runs in the calling process."""
        return any(s.execution == "local" for s in self.steps)

    def to_json(self) -> list[dict[str, Any]]:
        """All steps, with dependents, for ``swf.start_run``."""
        children = dag.dependents(self.graph)
        return [s.to_json(children[s.name]) for s in self.steps]


# -- loading a workflow -----------------------------------------------------------------


def load(workflow: Any, *, resource_queues: Mapping[str, str] | None = None) -> WorkflowDef:
    """Validate ``workflow`` (class, module or :class:`WorkflowDef`) into a :class:`WorkflowDef`.

    Raises a :class:`~swf_celery.errors.WorkflowDefinitionError` subclass naming the
    problem; nothing is written anywhere.
    """
    if isinstance(workflow, WorkflowDef):
        return workflow
    slug = _slug(workflow)
    entries: list[tuple[str, Any, StepOptions]] = []
    if hasattr(workflow, "__workflow_steps__"):
        raw_entries = workflow.__workflow_steps__()
        for i, entry in enumerate(raw_entries or ()):
            if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
                raise WorkflowDefinitionError(
                    f"{slug}.__workflow_steps__() entry {i} must be (name, function, "
                    f"{{options}}), not {entry!r:.100}")
            name, fn = entry[0], entry[1]
            given = dict(entry[2]) if len(entry) == 3 and entry[2] else {}
            marked = step_options(fn)
            base = {k: getattr(marked, k) for k in OPTION_NAMES} if marked else {}
            base.update(given)
            entries.append((name, fn, parse_options(base, where=f"{slug} step {name!r}")))
    elif isinstance(workflow, (type, types.ModuleType)):
        namespace: dict[str, Any] = {}
        owners: list[Any] = (list(reversed(workflow.__mro__[:-1]))
                             if isinstance(workflow, type) else [workflow])
        for owner in owners:
            namespace.update(vars(owner))
        for attr, value in namespace.items():
            marked_opts = step_options(value) if not attr.startswith("__") else None
            if marked_opts is not None:
                entries.append((marked_opts.name or attr, value, marked_opts))
    else:
        raise WorkflowDefinitionError(
            f"a workflow must be a class or module listing steps, or define "
            f"__workflow_steps__(); got {workflow!r:.100}")
    if not entries:
        raise WorkflowDefinitionError(
            f"workflow {slug} lists no steps: mark functions or tasks with @swf_celery.step "
            "or define __workflow_steps__()")
    return build(slug, entries, resource_queues=resource_queues)


def build(slug: str, entries: Sequence[tuple[str, Any, StepOptions]], *,
          resource_queues: Mapping[str, str] | None = None) -> WorkflowDef:
    """Validate ``(name, function, options)`` entries into a :class:`WorkflowDef`."""
    graph = []
    for name, _fn, opts in entries:
        deps = list(opts.depends_on)
        if opts.map_over and opts.map_over != "run" and opts.map_over not in deps:
            deps.append(opts.map_over)  # fanning out over a step implies depending on it
        graph.append((name, deps))
    deps_by_name = dag.validate(graph)
    steps = []
    for name, fn, opts in entries:
        clash = [d for d in deps_by_name[name] if opts.map_over and d in dag.MAP_INPUTS]
        if clash:
            raise WorkflowDefinitionError(
                f"workflow {slug} map step {name!r} depends on a step named {clash[0]!r}, "
                f"whose output would overwrite the input key {clash[0]!r}: rename that step")
        opts = replace(opts, depends_on=tuple(deps_by_name[name]))
        steps.append(_resolve(slug, name, fn, opts, resource_queues))
    return WorkflowDef(slug, tuple(steps))


def _resolve(slug: str, name: str, fn: Any, opts: StepOptions,
             resource_queues: Mapping[str, str] | None) -> StepDef:
    where = f"workflow {slug} step {name!r}"
    target = fn.__wrapped__ if isinstance(fn, Step) else fn
    if target is None or not callable(target):
        raise StepFunctionError(f"{where}: needs a function or Celery task, not {target!r}")
    a_task = is_task(target)
    execution = opts.execution or ("distributed" if a_task else "local")
    task_name = queue = None
    if execution == "distributed":
        if not a_task:
            raise StepFunctionError(
                f"{where}: execution='distributed' needs a registered Celery task "
                f"(@app.task or @shared_task), not {callable_name(target)}")
        task_name = target.name
        app = target.app
        if task_name not in app.tasks:
            raise StepFunctionError(
                f"{where}: Celery task {task_name!r} is not registered with app "
                f"{app.main!r}")
        if STEP_TASK_NAME not in app.tasks:  # registered on every app by import swf_celery
            raise StepFunctionError(
                f"{where}: app {app.main!r} lacks the {STEP_TASK_NAME!r} task; "
                "import swf_celery in the app module")
        queue = opts.queue or _resource_queue(where, opts.resources, app, resource_queues) \
            or _task_queue(target)
    if opts.map_over and opts.map_over != "run" and opts.map_over not in opts.depends_on:
        raise WorkflowDefinitionError(f"{where}: map_over {opts.map_over!r} is not a dependency")
    condition = condition_of(opts)
    if condition is not None and execution == "distributed":
        # The worker finds the predicate by its import path, or as @step gave it to the task.
        ref = imports.reference(condition[1])
        marked = step_options(fn) or step_options(target)
        if ref["path"] is None and (marked is None or condition_of(marked) != condition):
            raise WorkflowDefinitionError(
                f"{where}: the {condition[0]} of a distributed step runs on the worker, which "
                f"cannot import it ({ref['why']}): define it at module level, or give it "
                "with @swf_celery.step on the task")
    return StepDef(name, opts.depends_on, target, execution, task_name, queue,
                   opts.max_attempts, opts.retry_delay, opts.timeout, dict(opts.resources),
                   opts.map_over, condition, opts.run_on_skip, opts.on_exhausted,
                   opts.wait_for, opts.wait_until)


def _resource_queue(where: str, resources: Mapping[str, Any], app: Any,
                    explicit: Mapping[str, str] | None) -> str | None:
    wanted = [k for k, v in resources.items() if v]
    if not wanted:
        return None
    mapping = dict(app.conf.get(RESOURCE_QUEUES_SETTING) or {})
    mapping.update(explicit or {})
    queues = []
    for resource in wanted:
        if resource not in mapping:
            raise WorkflowDefinitionError(
                f"{where}: resource {resource!r} has no queue: name one with queue=..., or "
                f"map it, e.g. app.conf.{RESOURCE_QUEUES_SETTING} = "
                f"{{{resource!r}: '{resource}_workers'}}")
        if mapping[resource] not in queues:
            queues.append(mapping[resource])
    if len(queues) > 1:
        raise WorkflowDefinitionError(
            f"{where}: resources {wanted} map to different queues {queues}: name one with "
            "queue=...")
    return queues[0]


def _task_queue(task: Any) -> str:
    if getattr(task, "queue", None):
        return str(task.queue)
    route = task.app.amqp.router.route({}, task.name, (), {}, task)
    queue = route.get("queue")
    return getattr(queue, "name", None) or str(queue or task.app.conf.task_default_queue)


def _slug(workflow: Any) -> str:
    explicit = getattr(workflow, "__workflow_slug__", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    if isinstance(workflow, types.ModuleType):
        return workflow.__name__
    if isinstance(workflow, type):
        return f"{workflow.__module__}.{workflow.__qualname__}"
    return callable_name(workflow)
