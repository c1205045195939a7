"""Where a step function lives: its import path, recorded so that any process can run it.

A run's local steps execute in the process that drives the run. So that another process
can retry or take over the run (``swf-celery retry``, the console's retry button,
:meth:`~swf_celery.workflows.executor.Executor.resume`), each local step records a
reference to its function when the run starts: ``{"path": "package.module:Qualified.name"}``.
A function that cannot be imported by name (a lambda, a function defined inside another
function, a callable object) records ``{"path": null, "why": ...}``; such a run is driven only
by the process that started it, and a retry elsewhere is refused with that reason.
"""

from __future__ import annotations

import importlib
from typing import Any

from swf_celery.errors import StepFunctionError

#: ``bind`` value of a goal task's function: called with the task's id and description.
GOAL_TASK = "goal_task"


class TaskBound:
    """A goal task's step function, called with ``inputs["task"] = {"id", "description"}``
    added, so one function (the ``"*"`` default) can tell the tasks apart."""

    __swf_bind__ = GOAL_TASK

    def __init__(self, function: Any, task_id: str, description: str) -> None:
        self.__swf_function__ = function
        self.task = {"id": task_id, "description": description}

    def __call__(self, inputs: Any) -> Any:
        return self.__swf_function__({**inputs, "task": dict(self.task)})

    def __repr__(self) -> str:
        return f"<goal task {self.task['id']!r} of {self.__swf_function__!r}>"


def reference(function: Any) -> dict[str, Any]:
    """The import reference of ``function`` (see the module docstring)."""
    bind = getattr(function, "__swf_bind__", None)
    target = getattr(function, "__swf_function__", function)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    ref: dict[str, Any] = {"path": None}
    if bind:
        ref["bind"] = bind
    if not isinstance(module, str) or not isinstance(qualname, str):
        ref["why"] = f"{target!r:.80} has no module and qualified name"
    elif "<" in qualname:
        ref["why"] = (f"{module}.{qualname} is a lambda or is defined inside a function: "
                      "define it at module level")
    elif module == "__main__":
        ref["why"] = f"{qualname} is defined in __main__, which other processes cannot import"
    else:
        ref["path"] = f"{module}:{qualname}"
    return ref


def load(ref: Any, step: str, run_input: Any = None) -> Any:
    """Import the function a reference names (bound to its goal task, described in the run
    input, when it was); :class:`StepFunctionError` naming ``step`` and why when it cannot
    be."""
    if not isinstance(ref, dict) or not ref.get("path"):
        why = ref.get("why") if isinstance(ref, dict) else "no import path was recorded"
        raise StepFunctionError(f"local step {step!r}: its function cannot be imported ({why})")
    module_name, _, qualname = str(ref["path"]).partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception as exc:  # noqa: BLE001 - any import failure is the same answer
        raise StepFunctionError(
            f"local step {step!r}: cannot import its function {ref['path']}: "
            f"{type(exc).__name__}: {exc}") from None
    if not callable(found):
        raise StepFunctionError(f"local step {step!r}: {ref['path']} is not callable")
    if ref.get("bind") == GOAL_TASK:
        tasks = run_input.get("tasks") if isinstance(run_input, dict) else None
        description = tasks.get(step, "") if isinstance(tasks, dict) else ""
        return TaskBound(found, step, str(description))
    return found
