"""The missed-tick policy and the schedule codec, pure: Celery's schedule classes, no database."""

from __future__ import annotations

import datetime as dt

import pytest
from celery import Celery
from celery.schedules import crontab, schedule

from swf_celery.errors import ScheduleError
from swf_celery.schedules import codec, entries
from swf_celery.schedules.missed import Tick, plan

APP = Celery("missed_tests")
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
EVERY_SECOND = codec.parse(1, APP)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_ticks_on_time_and_late_within_the_grace_fire_each_with_its_time() -> None:
    fired, following = plan(EVERY_SECOND, at(0), at(2.5), grace=10)
    assert fired == [Tick(at(0)), Tick(at(1)), Tick(at(2))]
    assert following == at(3)


@pytest.mark.parametrize(("policy", "expected"), [
    # 100.5 s down, grace 10 s: ticks 0..90 are missed, 91..100 late and fire; the first
    # to fire counts the missed ones dropped.
    ("once", [Tick(at(90), 90)] + [Tick(at(s)) for s in range(91, 101)]),
    ("all", [Tick(at(86), 86)] + [Tick(at(s)) for s in range(87, 101)]),
    ("skip", [Tick(at(91), 91)] + [Tick(at(s)) for s in range(92, 101)]),
])
def test_missed_ticks_follow_the_entry_policy(policy: str, expected: list[Tick]) -> None:
    fired, following = plan(EVERY_SECOND, at(0), at(100.5), policy=policy, max_missed=5,
                            grace=10)
    assert fired == expected
    assert following == at(101)


def test_once_folds_a_gap_with_no_late_tick_into_one_run_at_the_latest_missed_tick() -> None:
    hourly = crontab(minute="0", app=APP)
    fired, following = plan(hourly, at(0), at(5 * 3600 + 1800), policy="once", grace=60)
    assert fired == [Tick(at(5 * 3600), 5)]
    assert following == at(6 * 3600)


def test_skip_drops_every_missed_tick_and_goes_on_at_the_next() -> None:
    hourly = crontab(minute="0", app=APP)
    fired, following = plan(hourly, at(0), at(5 * 3600 + 1800), policy="skip", grace=60)
    assert fired == []
    assert following == at(6 * 3600)


def test_a_long_gap_is_counted_and_an_interval_stays_on_its_grid() -> None:
    fired, following = plan(EVERY_SECOND, at(0), at(50_000.5), policy="once", grace=1)
    assert fired == [Tick(at(49_999), 49_999), Tick(at(50_000))]  # 50000 is late
    assert following == at(50_001)
    fired, _ = plan(EVERY_SECOND, at(0), at(50_000.5), policy="all", max_missed=3, grace=0.2)
    assert fired == [Tick(at(49_998), 49_998), Tick(at(49_999)), Tick(at(50_000))]


def test_the_codec_reads_back_what_it_wrote() -> None:
    for value in (crontab(minute="*/5", hour="9-17", day_of_week="mon-fri", app=APP),
                  schedule(dt.timedelta(seconds=2.5), app=APP)):
        again = codec.decode(codec.encode(value), APP)
        assert type(again) is type(value)
        assert codec.encode(again) == codec.encode(value)
        assert codec.next_after(again, at(7)) == codec.next_after(value, at(7))
    assert codec.encode(codec.parse("*/5 9-17 * * mon-fri", APP)) == {
        "type": "crontab", "minute": "*/5", "hour": "9-17", "day_of_week": "mon-fri",
        "day_of_month": "*", "month_of_year": "*"}


def test_an_interval_stays_on_its_grid() -> None:
    tick = at(0.25)
    for _ in range(1000):
        tick = codec.next_after(EVERY_SECOND, tick)
    assert tick == at(1000.25)


@pytest.mark.parametrize(("text", "message"), [
    ("61 * * * *", "invalid cron text '61 * * * *': Invalid end range: 61 > 59"),
    ("* * *", "it needs 5 fields"),
    ("0 9 * * funday", "invalid cron text"),
])
def test_invalid_cron_text_is_refused_naming_it(text: str, message: str) -> None:
    with pytest.raises(ScheduleError, match="nightly") as caught:
        entries.definition("nightly", {"task": "t", "schedule": text})
    assert message in str(caught.value)


def test_an_entry_needs_exactly_one_of_task_and_workflow_and_a_known_policy() -> None:
    with pytest.raises(ScheduleError, match="needs a task or a workflow"):
        entries.definition("e", {"schedule": 5})
    with pytest.raises(ScheduleError, match="needs a task or a workflow"):
        entries.definition("e", {"schedule": 5, "task": "t", "workflow": "m:W"})
    with pytest.raises(ScheduleError, match="missed must be one of once, all, skip"):
        entries.definition("e", {"schedule": 5, "task": "t", "missed": "some"})
    with pytest.raises(ScheduleError, match="unknown keys"):
        entries.definition("e", {"schedule": 5, "task": "t", "every": 3})
    with pytest.raises(ScheduleError, match="args must be JSON"):
        entries.definition("e", {"schedule": 5, "task": "t", "args": [object()]})
