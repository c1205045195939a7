"""Step options and the ``@step`` decorator: ONE spec of what a step may say.

:class:`StepOptions` lists every option a step takes; :data:`OPTION_NAMES` (its fields)
is what ``@step``, ``__workflow_steps__`` entries and ``FlowBuilder.add_step`` accept, and
:func:`parse_options` checks them all in one place, so a bad value fails the definition
with a message naming the step, never the transaction that dispatches it.

``@step`` works on plain functions and on Celery tasks, in both orders::

    @swf_celery.step(depends_on=["fetch"])      # step outermost: recommended, works with
    @app.task                                   # @app.task and @shared_task
    def train(inputs): ...

    @app.task                                   # task outermost also works: the task's
    @swf_celery.step(depends_on=["fetch"])      # function carries the step options
    def train(inputs): ...
"""

from __future__ import annotations

import datetime as dt
import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from swf_celery.errors import StepFunctionError, WorkflowDefinitionError
from swf_celery.workflows import conditions

EXECUTIONS = ("distributed", "local")
#: What a step that used up its attempts does: fail the run, or count as skipped.
ON_EXHAUSTED = ("fail", "skip")
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
    run_if: Callable[[Any], Any] | None = None
    skip_if: Callable[[Any], Any] | None = None
    run_on_skip: bool = False
    on_exhausted: str = "fail"
    wait_for: str | None = None
    wait_until: dt.datetime | float | None = None


#: Every option a step takes, in one list (the fields of :class:`StepOptions`).
OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(StepOptions))
#: The options stored with a dynamic flow's step (its name and dependencies are columns;
#: predicates are code, given with the functions).
STORED_OPTIONS: tuple[str, ...] = tuple(n for n in OPTION_NAMES
                                        if n not in ("depends_on", "name", "run_if", "skip_if"))


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
        return f"<step {self.__dict__[_MARK].name or callable_name(self.__wrapped__)}>"


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
    run_if: Callable[[Any], Any] | None = None,
    skip_if: Callable[[Any], Any] | None = None,
    run_on_skip: bool = False,
    on_exhausted: str = "fail",
    wait_for: str | None = None,
    wait_until: dt.datetime | float | None = None,
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

    Conditions: ``run_if`` (or its negation ``skip_if``) is a predicate over the step's
    inputs, evaluated where the step runs, just before it would; a skipped step's output is
    ``None`` and its dependents are skipped too unless they say ``run_on_skip=True``.
    ``on_exhausted="skip"`` skips a step that used up its attempts instead of failing the
    run. Waiting: ``wait_for="approved"`` starts the step only once
    ``signal(run_id, "approved", payload)`` was sent (the payload is ``inputs["approved"]``);
    ``wait_until`` (a timezone-aware datetime, or seconds after the dependencies finished)
    delays it durably.
    """
    options = parse_options(dict(depends_on=depends_on, queue=queue, execution=execution,
                            max_attempts=max_attempts, retry_delay=retry_delay,
                            timeout=timeout, resources=resources or {}, map_over=map_over,
                            name=name, run_if=run_if, skip_if=skip_if,
                            run_on_skip=run_on_skip, on_exhausted=on_exhausted,
                            wait_for=wait_for, wait_until=wait_until), where="@step")

    def mark(target: Any) -> Any:
        condition = condition_of(options)
        if condition is not None and is_task(target):
            conditions.register(target.name, condition)
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
    if is_task(obj):
        # @app.task over @step: the task's run function carries the mark.
        return getattr(getattr(obj, "run", None), _MARK, None)
    return None


def condition_of(options: StepOptions) -> tuple[str, Callable[[Any], Any]] | None:
    """``("run_if" | "skip_if", predicate)`` of a step's options, or ``None``."""
    return conditions.of_options(options)


def parse_options(raw: Mapping[str, Any], where: str) -> StepOptions:
    """Check raw step options (``where`` names the step in errors) into :class:`StepOptions`."""
    unknown = set(raw) - set(OPTION_NAMES)
    if unknown:
        raise WorkflowDefinitionError(
            f"{where}: unknown step option(s) {sorted(unknown)}; known: {sorted(OPTION_NAMES)}")
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
    run_if, skip_if = raw.get("run_if"), raw.get("skip_if")
    for key, predicate in (("run_if", run_if), ("skip_if", skip_if)):
        if predicate is not None and not callable(predicate):
            raise WorkflowDefinitionError(
                f"{where}: {key} must be a function of the step's inputs, not {predicate!r}")
    if run_if is not None and skip_if is not None:
        raise WorkflowDefinitionError(f"{where}: give run_if or skip_if, not both")
    if (run_if or skip_if) and raw.get("map_over"):
        raise WorkflowDefinitionError(
            f"{where}: a map step takes no run_if/skip_if (put the condition on a step "
            "before it)")
    run_on_skip = raw.get("run_on_skip", False)
    if not isinstance(run_on_skip, bool):
        raise WorkflowDefinitionError(f"{where}: run_on_skip must be True or False, "
                                      f"not {run_on_skip!r}")
    on_exhausted = raw.get("on_exhausted", "fail")
    if on_exhausted not in ON_EXHAUSTED:
        raise WorkflowDefinitionError(f"{where}: on_exhausted must be 'fail' or 'skip', "
                                      f"not {on_exhausted!r}")
    wait_for = raw.get("wait_for")
    if wait_for is not None and (not isinstance(wait_for, str) or not wait_for
                                 or len(wait_for) > 200):
        raise WorkflowDefinitionError(f"{where}: wait_for must be a signal name (1-200 "
                                      f"characters), not {wait_for!r}")
    wait_until = _wait_until(raw.get("wait_until"), where)
    return StepOptions(tuple(depends_on), raw.get("queue"), execution, attempts, float(delay),
                       None if timeout is None else float(timeout), dict(resources),
                       raw.get("map_over"), raw.get("name"), run_if, skip_if, run_on_skip,
                       on_exhausted, wait_for, wait_until)


def _wait_until(value: Any, where: str) -> dt.datetime | float | None:
    """A wait: an aware datetime (ISO text too, as stored flows keep it) or seconds >= 0."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise WorkflowDefinitionError(
                f"{where}: wait_until {value!r} is not an ISO-8601 time") from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise WorkflowDefinitionError(
                f"{where}: wait_until needs a timezone-aware datetime (e.g. with "
                "tzinfo=datetime.timezone.utc), not a naive one")
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise WorkflowDefinitionError(f"{where}: wait_until must be a datetime or seconds >= 0, "
                                  f"not {value!r}")


def is_task(obj: Any) -> bool:
    """Whether ``obj`` is a Celery task (duck-typed: no Celery import needed)."""
    # Duck-typed so that loading a local-only workflow does not import Celery.
    return not inspect.isclass(obj) and all(hasattr(obj, a)
                                            for a in ("apply_async", "name", "app"))


def callable_name(obj: Any) -> str:
    """A readable name of a function, task or object, for messages."""
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
