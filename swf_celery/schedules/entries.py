"""A schedule entry: what a tick starts, when, and what to do with missed ticks.

:func:`definition` checks what a user gives (``beat_schedule``'s dicts, the Python API, the
CLI, an import) and turns it into the JSON ``swf.schedule_put`` stores; :class:`Entry` is a
stored row as the API, the CLI and the console show it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from swf_celery.errors import ScheduleError
from swf_celery.schedules import codec
from swf_celery.schedules.missed import POLICIES

#: The keys of a ``beat_schedule`` entry (Celery's, then ours).
KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative",
                  "workflow", "input", "missed", "max_missed", "skip_if_running", "paused"})


@dataclass(frozen=True)
class Entry:
    """A stored schedule entry, its next run and its last tick."""

    name: str
    task: str | None
    workflow: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    schedule: dict[str, Any]
    missed: str
    max_missed: int
    skip_if_running: bool
    paused: bool
    source: str
    next_run_at: dt.datetime
    last_run_at: dt.datetime | None
    total_run_count: int
    last_task_id: str | None = None
    last_run_id: str | None = None
    last_state: str | None = None
    last_beat: str | None = None

    @property
    def schedule_text(self) -> str:
        """The schedule as cron text, ``every Ns`` or the solar event."""
        return codec.describe(self.schedule)

    @property
    def target(self) -> str:
        """The task's name, or ``workflow <import path>``."""
        return self.task if self.task is not None else f"workflow {self.workflow}"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Entry:
        """The entry of a ``swf.schedules`` row (with the ``entries`` query's last-tick columns)."""
        values: dict[str, Any] = {name: row.get(name) for name in cls.__dataclass_fields__}
        return cls(**values)


def definition(name: str, given: Mapping[str, Any], app: Any = None) -> dict[str, Any]:
    """The stored JSON of entry ``name`` from ``given`` (a ``beat_schedule`` value's keys).

    Raises :class:`ScheduleError` naming the entry and what is wrong with it.
    """
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise ScheduleError(f"a schedule entry needs a name of 1 to 200 characters, not "
                            f"{name!r}")
    unknown = set(given) - KEYS
    if unknown:
        raise ScheduleError(f"schedule entry {name!r}: unknown keys {sorted(unknown)}; "
                            f"an entry takes {sorted(KEYS)}")
    task, workflow = given.get("task"), given.get("workflow")
    if (task is None) == (workflow is None):
        raise ScheduleError(f"schedule entry {name!r} needs a task or a workflow (one of them)")
    if task is not None and (not isinstance(task, str) or not task):
        raise ScheduleError(f"schedule entry {name!r}: task must be a task name, not {task!r}")
    if workflow is not None:
        workflow = workflow_path(workflow, name)
    if "schedule" not in given:
        raise ScheduleError(f"schedule entry {name!r} has no schedule")
    try:
        schedule = codec.parse(given["schedule"], app)
    except ScheduleError as exc:
        raise ScheduleError(f"schedule entry {name!r}: {exc}") from None
    encoded = codec.encode(schedule)
    if given.get("relative") and encoded["type"] == "interval":
        encoded["relative"] = True
    missed = given.get("missed", "once")
    if missed not in POLICIES:
        raise ScheduleError(f"schedule entry {name!r}: missed must be one of "
                            f"{', '.join(POLICIES)}, not {missed!r}")
    max_missed = given.get("max_missed", 100)
    if not isinstance(max_missed, int) or isinstance(max_missed, bool) \
            or not 1 <= max_missed <= 10_000:
        raise ScheduleError(f"schedule entry {name!r}: max_missed must be 1 to 10000, not "
                            f"{max_missed!r}")
    args = list(given.get("args") or ())
    kwargs = dict(given.get("kwargs") or {})
    if workflow is not None and "input" in given:
        kwargs = given["input"]
        if not isinstance(kwargs, dict):
            raise ScheduleError(f"schedule entry {name!r}: a workflow's input must be a dict, "
                                f"not {type(kwargs).__name__}")
    entry: dict[str, Any] = {
        "task": task, "workflow": workflow, "args": args, "kwargs": kwargs,
        "options": dict(given.get("options") or {}), "schedule": encoded, "missed": missed,
        "max_missed": max_missed, "skip_if_running": bool(given.get("skip_if_running", False))}
    if "paused" in given:
        entry["paused"] = bool(given["paused"])
    for key in ("args", "kwargs", "options"):
        try:
            json.dumps(entry[key], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ScheduleError(f"schedule entry {name!r}: {key} must be JSON: {exc}") from None
    return entry


def workflow_path(workflow: Any, name: str = "?") -> str:
    """The import path (``module:attribute``) of a workflow class or module, or the path
    given."""
    if isinstance(workflow, str):
        if ":" not in workflow:
            raise ScheduleError(f"schedule entry {name!r}: a workflow is given as "
                                f"'module:attribute', not {workflow!r}")
        return workflow
    module = getattr(workflow, "__module__", None) if not hasattr(workflow, "__file__") \
        else None
    if hasattr(workflow, "__file__"):  # a module of step functions
        return f"{workflow.__name__}:"
    qualname = getattr(workflow, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ScheduleError(f"schedule entry {name!r}: workflow {workflow!r} cannot be "
                            "imported by name; give its 'module:attribute'")
    return f"{module}:{qualname}"
