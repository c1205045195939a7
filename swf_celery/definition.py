"""Workflow definitions: the ``@step`` decorator and loading a workflow into a validated graph.

A workflow is any of

- a class (or module) whose attributes are step-marked functions or Celery tasks; the
  attribute name is the step name, definition order is kept::

      class Pipeline:
          fetch = fetch_task                       # @swf_celery.step() on the task
          train = swf_celery.step(depends_on=["fetch"], queue="gpu_workers")(train_task)

- a class with the seed's ``__workflow_steps__()`` returning ``(name, function,
  {"depends_on": [...], "queue": ..., ...})`` entries (the options dict may be omitted);
- a :class:`WorkflowDef` built by code (dynamic flows do this).

``@step`` works on plain functions and on Celery tasks, in both orders::

    @swf_celery.step(depends_on=["fetch"])      # step outermost: recommended, works with
    @app.task                                   # @app.task and @shared_task
    def train(inputs): ...

    @app.task                                   # task outermost also works: the task's
    @swf_celery.step(depends_on=["fetch"])      # function carries the step options
    def train(inputs): ...

Step contract: the function receives ONE mapping ``{"run": <run input>, "<dependency>":
<its output>, ...}`` (a map step also gets ``"item"`` and ``"index"``) and returns a
JSON-serialisable output; raising fails the attempt. The run's result is
``{<leaf step>: <its output>}``.

Loading validates everything (see :mod:`swf_celery.dag`) before the database is touched.
"""

from __future__ import annotations

import inspect
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from swf_celery import dag
from swf_celery.errors import StepFunctionError, WorkflowDefinitionError

EXECUTIONS = ("distributed", "local")
#: The Celery task that runs distributed steps on workers (see :mod:`swf_celery.step_task`).
STEP_TASK_NAME = "swf_celery.step"
#: Celery setting holding the default resource -> queue map.
RESOURCE_QUEUES_SETTING = "swf_resource_queues"

_OPTION_KEYS = {"depends_on", "queue", "execution", "max_attempts", "retry_delay", "timeout",
                "resources", "map_over", "name"}
_MARK = "__swf_step__"


@dataclass(frozen=True)
class StepOptions:
    """Options given to :func:`step` (or in a ``__workflow_steps__`` entry)."""

    depends_on: tuple[str, ...] = ()
    queue: str | None = None
    execution: str | None = None
    max_attempts: int = 3
    retry_delay: float = 1.0
    timeout: float | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    map_over: str | None = None
    name: str | None = None


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
        }


@dataclass(frozen=True)
class WorkflowDef:
    """A validated workflow: its slug and its steps in definition order."""

    slug: str
    steps: tuple[StepDef, ...]

    def step(self, name: str) -> StepDef:
        """The step called ``name``."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

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


class Step:
    """A Celery task (or callable object) marked as a workflow step.

    Calls and attribute access pass through to the task, so ``train.delay(...)`` still
    works; :func:`step` returns a plain function unchanged (with the options attached).
    """

    def __init__(self, target: Any, options: StepOptions) -> None:
        self.__dict__["__wrapped__"] = target
        self.__dict__[_MARK] = options

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["__wrapped__"], name)

    def __repr__(self) -> str:
        return f"<step {self.__dict__[_MARK].name or _callable_name(self.__wrapped__)}>"


def step(
    depends_on: Sequence[str] = (),
    *,
    queue: str | None = None,
    execution: str | None = None,
    max_attempts: int = 3,
    retry_delay: float = 1.0,
    timeout: float | None = None,
    resources: Mapping[str, Any] | None = None,
    map_over: str | None = None,
    name: str | None = None,
) -> Callable[[Any], Any]:
    """Mark a function or Celery task as a workflow step.

    ``depends_on``: names of the steps whose outputs this one needs. ``queue``: the Celery
    queue of a distributed step (default: the task's own routing, or the queue that
    ``resources`` map to). ``execution``: ``"distributed"`` (default for Celery tasks) or
    ``"local"`` (default for plain callables; runs in the process that started the run).
    ``max_attempts``: attempts before the step fails the run; retries wait ``retry_delay``
    seconds, doubled each attempt. ``timeout``: seconds one attempt may take. ``resources``:
    e.g. ``{"gpu": True}``; stored and used for routing. ``map_over``: the dependency (or
    ``"run"``) whose list output this step fans out over, one task per item.
    """
    # Registers the step runner task with every Celery app, so a worker that imports a
    # module using @step can run distributed steps.
    from swf_celery import step_task  # noqa: F401

    options = _options(dict(depends_on=depends_on, queue=queue, execution=execution,
                            max_attempts=max_attempts, retry_delay=retry_delay,
                            timeout=timeout, resources=resources or {}, map_over=map_over,
                            name=name), where="@step")

    def mark(target: Any) -> Any:
        if isinstance(target, types.FunctionType):
            setattr(target, _MARK, options)
            return target
        if isinstance(target, Step):
            return Step(target.__wrapped__, options)
        if not callable(target):
            raise StepFunctionError(f"@step needs a function or Celery task, not {target!r}")
        return Step(target, options)

    return mark


def step_options(obj: Any) -> StepOptions | None:
    """The :class:`StepOptions` a function or task was marked with, or ``None``."""
    if isinstance(obj, Step):
        return obj.__dict__[_MARK]
    if isinstance(obj, types.FunctionType):
        return getattr(obj, _MARK, None)
    if _is_task(obj):
        # @app.task over @step: the task's run function carries the mark.
        return getattr(getattr(obj, "run", None), _MARK, None)
    return None


def _options(raw: Mapping[str, Any], where: str) -> StepOptions:
    unknown = set(raw) - _OPTION_KEYS
    if unknown:
        raise WorkflowDefinitionError(
            f"{where}: unknown step option(s) {sorted(unknown)}; known: {sorted(_OPTION_KEYS)}")
    depends_on = raw.get("depends_on") or ()
    if isinstance(depends_on, str) or not all(isinstance(d, str) for d in depends_on):
        raise WorkflowDefinitionError(
            f"{where}: depends_on must be a list of step names, not {depends_on!r}")
    execution = raw.get("execution")
    if execution is not None and execution not in EXECUTIONS:
        raise WorkflowDefinitionError(
            f"{where}: execution must be 'distributed' or 'local', not {execution!r}")
    attempts = raw.get("max_attempts", 3)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        raise WorkflowDefinitionError(
            f"{where}: max_attempts must be an int >= 1, not {attempts!r}")
    delay = raw.get("retry_delay", 1.0)
    if not isinstance(delay, (int, float)) or isinstance(delay, bool) or delay < 0:
        raise WorkflowDefinitionError(f"{where}: retry_delay must be seconds >= 0, not {delay!r}")
    timeout = raw.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise WorkflowDefinitionError(f"{where}: timeout must be seconds > 0, not {timeout!r}")
    resources = raw.get("resources") or {}
    if not isinstance(resources, Mapping) or not all(isinstance(k, str) for k in resources):
        raise WorkflowDefinitionError(
            f"{where}: resources must be a mapping of names, e.g. {{'gpu': True}}, "
            f"not {resources!r}")
    for key in ("queue", "map_over", "name"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise WorkflowDefinitionError(f"{where}: {key} must be a non-empty string, "
                                          f"not {value!r}")
    queue = raw.get("queue")
    # The broker's rules, checked here so that a bad name fails the definition, not the
    # transaction that dispatches the step.
    if queue is not None and (len(queue.encode()) > 255
                              or any(ord(c) < 32 or ord(c) == 127 for c in queue)):
        raise WorkflowDefinitionError(
            f"{where}: queue name {queue[:40]!r} has control characters or is over 255 bytes")
    return StepOptions(tuple(depends_on), raw.get("queue"), execution, attempts, float(delay),
                       None if timeout is None else float(timeout), dict(resources),
                       raw.get("map_over"), raw.get("name"))


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
            base = {k: getattr(marked, k) for k in _OPTION_KEYS} if marked else {}
            base.update(given)
            entries.append((name, fn, _options(base, where=f"{slug} step {name!r}")))
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
        opts = replace(opts, depends_on=tuple(deps_by_name[name]))
        steps.append(_resolve(slug, name, fn, opts, resource_queues))
    return WorkflowDef(slug, tuple(steps))


def _resolve(slug: str, name: str, fn: Any, opts: StepOptions,
             resource_queues: Mapping[str, str] | None) -> StepDef:
    where = f"workflow {slug} step {name!r}"
    target = fn.__wrapped__ if isinstance(fn, Step) else fn
    if target is None or not callable(target):
        raise StepFunctionError(f"{where}: needs a function or Celery task, not {target!r}")
    is_task = _is_task(target)
    execution = opts.execution or ("distributed" if is_task else "local")
    task_name = queue = None
    if execution == "distributed":
        if not is_task:
            raise StepFunctionError(
                f"{where}: execution='distributed' needs a registered Celery task "
                f"(@app.task or @shared_task), not {_callable_name(target)}")
        task_name = target.name
        app = target.app
        if task_name not in app.tasks:
            raise StepFunctionError(
                f"{where}: Celery task {task_name!r} is not registered with app "
                f"{app.main!r}")
        from swf_celery import step_task  # noqa: F401 - registers the step runner task

        if STEP_TASK_NAME not in app.tasks:
            raise StepFunctionError(
                f"{where}: app {app.main!r} lacks the {STEP_TASK_NAME!r} task; "
                "import swf_celery.step_task in the app module")
        queue = opts.queue or _resource_queue(where, opts.resources, app, resource_queues) \
            or _task_queue(target)
    if opts.map_over and opts.map_over != "run" and opts.map_over not in opts.depends_on:
        raise WorkflowDefinitionError(f"{where}: map_over {opts.map_over!r} is not a dependency")
    return StepDef(name, opts.depends_on, target, execution, task_name, queue,
                   opts.max_attempts, opts.retry_delay, opts.timeout, dict(opts.resources),
                   opts.map_over)


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


def _is_task(obj: Any) -> bool:
    # Duck-typed so that loading a local-only workflow does not import Celery.
    return not inspect.isclass(obj) and all(hasattr(obj, a)
                                            for a in ("apply_async", "name", "app"))


def _callable_name(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)


def _slug(workflow: Any) -> str:
    explicit = getattr(workflow, "__workflow_slug__", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    if isinstance(workflow, types.ModuleType):
        return workflow.__name__
    if isinstance(workflow, type):
        return f"{workflow.__module__}.{workflow.__qualname__}"
    return _callable_name(workflow)
