"""Conditional steps: evaluating a step's ``run_if`` / ``skip_if`` where the step runs.

The predicate runs in the process that runs the step (the worker of a distributed step, the
driver of a local one), on the step's inputs, just before the step would: so it sees what
the step sees, and nothing but the step's own code must be importable there. It is found,
in order, as the process was given it (the workflow's definition, for a local step), by the
import path recorded when the run started, or as ``@swf_celery.step`` gave it to the Celery
task whose module the worker imported. A predicate that raises fails the attempt, as the
step would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from swf_celery.errors import StepFunctionError
from swf_celery.workflows import imports

Condition = tuple[str, Callable[[Any], Any]]

#: Predicates given with ``@step`` on a Celery task, by task name: a worker finds the one
#: of the step it runs here (its module ran the decorator) when it cannot import it.
_BY_TASK: dict[str, Condition] = {}


def register(task_name: str, condition: Condition) -> None:
    """Remember the predicate ``@step`` gave the Celery task ``task_name``."""
    _BY_TASK[task_name] = condition


def of_options(options: Any) -> Condition | None:
    """``("run_if" | "skip_if", predicate)`` of step options (any object with ``run_if`` and
    ``skip_if``), or ``None``."""
    if getattr(options, "run_if", None) is not None:
        return "run_if", options.run_if
    if getattr(options, "skip_if", None) is not None:
        return "skip_if", options.skip_if
    return None


def of_task(task: Any) -> Condition | None:
    """The predicate a Celery task carries: ``@step`` over it (registered by name) or under
    it (the options marked on its run function)."""
    found = _BY_TASK.get(getattr(task, "name", None) or "")
    if found is None:
        found = of_options(getattr(getattr(task, "run", None), "__swf_step__", None))
    return found


def find(claim: dict[str, Any], known: Condition | None = None) -> Condition | None:
    """The condition of the task ``claim`` (from ``swf.start_task``), or ``None``."""
    recorded = claim.get("condition")
    if not recorded:
        return None
    kind = "run_if" if "run_if" in recorded else "skip_if"
    if known is not None and known[0] == kind:
        return known
    ref = recorded[kind]
    if isinstance(ref, dict) and ref.get("path"):
        return kind, imports.load(ref, claim["step"])
    by_task = _BY_TASK.get(claim.get("task_name") or "")
    if by_task is not None and by_task[0] == kind:
        return by_task
    why = ref.get("why") if isinstance(ref, dict) else "nothing was recorded"
    raise StepFunctionError(f"step {claim['step']!r}: cannot find its {kind} here ({why})")


def skip_reason(claim: dict[str, Any], known: Condition | None = None) -> str | None:
    """Why the step of ``claim`` is skipped, or ``None`` when it runs."""
    condition = find(claim, known)
    if condition is None:
        return None
    kind, predicate = condition
    value = bool(predicate(claim["input"]))
    if (kind == "run_if") != value:
        return f"{kind} was {value}"
    return None
