"""Which ticks of an entry fire now: the missed-tick policy, pure (no I/O, no clock).

A tick at most ``grace`` seconds late (a beat failover, a database restart) is *late*: it
fires, with its own tick time. An older one is *missed* (every beat was down) and the
entry's policy decides:

- ``once`` (Celery's default): the missed ticks fold into one run now, recorded at the
  latest of them with how many others it stands for;
- ``all``: each missed tick fires, the latest ``max_missed`` of them; older ones are dropped;
- ``skip``: missed ticks are dropped; the entry goes on at its next tick.

Late ticks fire under every policy. The first tick fired counts the ticks dropped before it
(``swf.schedule_ticks.missed``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from celery.schedules import BaseSchedule
from celery.schedules import schedule as interval

from swf_celery.schedules.codec import next_after

#: The missed-tick policies (``swf.schedules.missed``).
POLICIES = ("once", "all", "skip")
#: Most ticks walked through after a gap; beyond, the entry resumes at its first tick after
#: now (an interval jumps on its grid first, so it never walks that far).
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
    uncounted = 0
    if type(schedule) is interval:  # jump over the ticks that cannot fire, on the grid
        every = schedule.run_every
        earliest = now - dt.timedelta(seconds=grace) - max_missed * every
        if at < earliest:
            uncounted = (earliest - at) // every
            at += uncounted * every
    while at <= now and len(due) < WALK_LIMIT:
        due.append(at)
        at = next_after(schedule, at)
    if at <= now:  # more ticks than we walk: resume at the first after now, one more missed
        uncounted += 1
        at = next_after(schedule, now)
    cutoff = now - dt.timedelta(seconds=grace)
    late = [Tick(t) for t in due if t >= cutoff]
    missed = [t for t in due if t < cutoff]
    dropped = len(missed) + uncounted
    if policy == "once" and dropped:
        # One run for them all, at the latest missed tick (or, when the walk stopped short,
        # the last walked one): a tick time no other run of the entry has.
        folded = missed[-1] if missed else None
        if folded is not None:
            return [Tick(folded, dropped - 1), *late], at
    if policy == "all" and missed:
        kept = missed[-max_missed:]
        dropped -= len(kept)
        late = [Tick(t) for t in kept] + late
    if late and dropped:
        late[0] = Tick(late[0].at, dropped)
    return late, at
