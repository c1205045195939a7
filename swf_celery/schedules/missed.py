"""Which ticks of an entry fire now: the missed-tick policy, pure (no I/O, no clock).

A tick at most ``grace`` seconds late (a beat failover, a database restart) is *late*: it
fires, with its own tick time. An older one is *missed* (every beat was down) and the
entry's policy decides:

- ``once`` (Celery's default): the missed ticks fold into one run now, recorded at the
  latest of them (with how many it stands for), unless a late tick fires anyway;
- ``all``: each missed tick fires, the latest ``max_missed`` of them; older ones are dropped;
- ``skip``: missed ticks are dropped; the entry goes on at its next tick.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from celery.schedules import BaseSchedule

from swf_celery.schedules.codec import next_after

#: The missed-tick policies (``swf.schedules.missed``).
POLICIES = ("once", "all", "skip")
#: Most ticks walked through after a gap; beyond, the entry resumes at its first tick after now.
WALK_LIMIT = 10_000


@dataclass(frozen=True)
class Tick:
    """A tick to fire: its time, and how many missed ticks it stands for (dropped or folded)."""

    at: dt.datetime
    missed: int = 0


def plan(schedule: BaseSchedule, next_run_at: dt.datetime, now: dt.datetime, *,
         policy: str = "once", max_missed: int = 100, grace: float = 60.0
         ) -> tuple[list[Tick], dt.datetime]:
    """The ticks of an entry due at ``next_run_at`` to fire at ``now``, and its next run."""
    if policy not in POLICIES:
        raise ValueError(f"missed-tick policy must be one of {', '.join(POLICIES)}, "
                         f"not {policy!r}")
    due: list[dt.datetime] = []
    at = next_run_at
    while at <= now and len(due) < WALK_LIMIT:
        due.append(at)
        at = next_after(schedule, at)
    uncounted = 0
    if at <= now:  # more ticks than we walk: resume after now, count them as one more
        uncounted = 1
        at = next_after(schedule, now)
    cutoff = now - dt.timedelta(seconds=grace)
    late = [t for t in due if t >= cutoff]
    missed = [t for t in due if t < cutoff]
    dropped = len(missed) + uncounted
    if policy == "all" and missed:
        kept = missed[-max_missed:]
        dropped -= len(kept)
        late = kept + late
    elif policy == "once" and missed and not late:
        return [Tick(missed[-1], dropped - 1)], at
    fired = [Tick(t) for t in late]
    if fired and dropped:
        fired[0] = Tick(fired[0].at, dropped)
    return fired, at
