"""Schedules in PostgreSQL: Celery beat with any number of processes, each tick fired once.

``celery -A app beat -S swf_celery.schedules.Scheduler`` (or ``beat_scheduler =
"swf_celery.schedules:Scheduler"``) stores ``beat_schedule`` in PostgreSQL; the functions
below change the schedule while beat runs (``swf.schedules.add(...)`` after ``import
swf_celery as swf``). See docs/schedules.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swf_celery.schedules.entries import Entry
from swf_celery.schedules.store import (
    add,
    delete,
    get,
    list_entries,
    pause,
    resume,
    ticks,
    update,
)

if TYPE_CHECKING:
    from swf_celery.schedules.scheduler import Scheduler

__all__ = ["Entry", "Scheduler", "add", "delete", "get", "list_entries", "pause", "resume",
           "ticks", "update"]


def __getattr__(name: str) -> Any:
    # The scheduler imports Celery's beat and the workflow layer: only beat needs them.
    if name == "Scheduler":
        from swf_celery.schedules.scheduler import Scheduler

        return Scheduler
    raise AttributeError(f"module 'swf_celery.schedules' has no attribute {name!r}")
