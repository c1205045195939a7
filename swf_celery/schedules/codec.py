"""Celery schedules as JSON, and the next tick of one: Celery's own classes do the arithmetic.

An entry's ``schedule`` column holds one of (``swf.schedules.schedule``)::

    {"type": "crontab", "minute": "*/5", "hour": "*", "day_of_week": "*",
     "day_of_month": "*", "month_of_year": "*"}          # celery.schedules.crontab
    {"type": "interval", "seconds": 30.0, "relative": false}   # celery.schedules.schedule
    {"type": "solar", "event": "sunset", "lat": 48.85, "lon": 2.35}  # celery.schedules.solar

The crontab fields are the texts it was given (``crontab._orig_*``), so what is read back is
the same ``crontab``. :func:`parse` accepts what a user writes: a Celery schedule object, a
number of seconds or a ``timedelta`` (an interval), five-field cron text, or the JSON above.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from celery.schedules import BaseSchedule, crontab, schedule, solar

from swf_celery.errors import ScheduleError

_CRON_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
#: The cron text's field order (``crontab.from_string``): minute hour day-of-month month
#: day-of-week.
_CRON_TEXT_ORDER = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


def encode(value: BaseSchedule) -> dict[str, Any]:
    """The JSON form of a Celery schedule (crontab, schedule or solar)."""
    if isinstance(value, crontab):
        return {"type": "crontab",
                **{name: str(getattr(value, f"_orig_{name}")) for name in _CRON_FIELDS}}
    if isinstance(value, solar):
        return {"type": "solar", "event": value.event, "lat": float(value.lat),
                "lon": float(value.lon)}
    if isinstance(value, schedule):
        return {"type": "interval", "seconds": value.run_every.total_seconds(),
                "relative": bool(value.relative)}
    raise ScheduleError(f"cannot store a schedule of type {type(value).__name__}: use "
                        "celery.schedules.crontab, schedule (an interval) or solar")


def decode(data: dict[str, Any], app: Any = None) -> BaseSchedule:
    """The Celery schedule of a JSON form written by :func:`encode`."""
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "crontab":
            return crontab(**{name: str(data.get(name, "*")) for name in _CRON_FIELDS},
                           app=app)
        if kind == "interval":
            return schedule(dt.timedelta(seconds=float(data["seconds"])),
                            relative=bool(data.get("relative", False)), app=app)
        if kind == "solar":
            return solar(str(data["event"]), float(data["lat"]), float(data["lon"]), app=app)
    except (ValueError, KeyError, TypeError) as exc:
        raise ScheduleError(f"invalid {kind} schedule {data!r}: {exc}") from None
    raise ScheduleError(f"unknown schedule {data!r}: its type must be crontab, interval or "
                        "solar")


def parse(value: Any, app: Any = None) -> BaseSchedule:
    """A Celery schedule from what a user gives; :class:`ScheduleError` says what is wrong."""
    if isinstance(value, BaseSchedule):
        encode(value)  # refuses the kinds that cannot be stored
        return value
    if isinstance(value, bool):
        raise ScheduleError(f"invalid schedule {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ScheduleError(f"an interval must be over 0 seconds, not {value}")
        return schedule(dt.timedelta(seconds=value), app=app)
    if isinstance(value, dt.timedelta):
        return parse(value.total_seconds(), app)
    if isinstance(value, dict):
        return decode(value, app)
    if isinstance(value, str):
        return parse_cron(value, app)
    raise ScheduleError(f"invalid schedule {value!r}: give a crontab, an interval in seconds "
                        "or cron text such as '*/5 * * * *'")


def parse_cron(text: str, app: Any = None) -> crontab:
    """``crontab`` of five-field cron text (minute hour day-of-month month day-of-week)."""
    fields = text.split()
    if len(fields) != len(_CRON_TEXT_ORDER):
        raise ScheduleError(f"invalid cron text {text!r}: it needs 5 fields (minute hour "
                            f"day-of-month month day-of-week), not {len(fields)}")
    try:
        return crontab(**dict(zip(_CRON_TEXT_ORDER, fields, strict=True)), app=app)
    except ValueError as exc:
        raise ScheduleError(f"invalid cron text {text!r}: {exc}") from None


def describe(data: dict[str, Any]) -> str:
    """A short text of a JSON schedule (cron text, ``every 30s``, ``sunset at lat,lon``)."""
    kind = data.get("type")
    if kind == "crontab":
        return " ".join(str(data.get(name, "*")) for name in _CRON_TEXT_ORDER)
    if kind == "interval":
        return f"every {float(data['seconds']):g}s"
    if kind == "solar":
        return f"{data['event']} at {data['lat']},{data['lon']}"
    return str(data)


def next_after(value: BaseSchedule, after: dt.datetime) -> dt.datetime:
    """The schedule's first tick after ``after`` (aware), in UTC.

    Celery's ``remaining_estimate(last_run_at)`` answers "how long from now"; asked with
    its clock stopped at ``after``, it answers "how long after ``after``", exactly, so the
    ticks of an interval stay on their grid however late they are computed.
    """
    if after.tzinfo is None:
        raise ValueError("next_after needs an aware datetime")
    frozen = copy.copy(value)
    frozen.nowfun = lambda: after
    remaining = frozen.remaining_estimate(after)
    following = after + remaining
    if following <= after:  # a crontab asked exactly on a tick answers that tick
        following = after + frozen.remaining_estimate(after + dt.timedelta(seconds=1)) \
            + dt.timedelta(seconds=1)
    return following.astimezone(dt.timezone.utc)
