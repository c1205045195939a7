"""The schedule's API, CLI and imports on a real PostgreSQL (no beat: see test_beat.py)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from celery import Celery
from celery.beat import PersistentScheduler
from celery.schedules import crontab

import swf_celery as swf
from swf_celery.errors import DatabasePermissionError, ScheduleError, ScheduleNotFound
from swf_celery.schedules import importing
from tests.helpers import error_lines, run_cli, sql, sql_value

pytestmark = pytest.mark.db


def test_entries_are_added_changed_paused_resumed_and_deleted(db_url: str) -> None:
    entry = swf.schedules.add("report", task="app.report", schedule="*/5 * * * *",
                              args=[1], kwargs={"to": "ops"}, options={"queue": "mail"},
                              repo=db_url)
    assert (entry.schedule_text, entry.missed, entry.source) == ("*/5 * * * *", "once", "api")
    assert entry.next_run_at.minute % 5 == 0 and entry.next_run_at > dt.datetime.now(dt.UTC)
    with pytest.raises(ScheduleError, match="'report' exists: use update"):
        swf.schedules.add("report", task="app.report", schedule=60, repo=db_url)
    kept = swf.schedules.update("report", args=[2], repo=db_url)
    assert kept.args == [2] and kept.next_run_at == entry.next_run_at  # same schedule
    moved = swf.schedules.update("report", schedule=dt.timedelta(hours=1), missed="all",
                                 repo=db_url)
    assert moved.schedule == {"type": "interval", "seconds": 3600.0, "relative": False}
    assert moved.missed == "all" and moved.next_run_at != entry.next_run_at
    swf.schedules.pause("report", db_url)
    assert swf.schedules.get("report", db_url).paused
    swf.schedules.resume("report", repo=db_url)
    assert not swf.schedules.get("report", db_url).paused
    assert [e.name for e in swf.schedules.list_entries(db_url)] == ["report"]
    swf.schedules.delete("report", db_url)
    for call in (swf.schedules.delete, swf.schedules.pause, swf.schedules.get):
        with pytest.raises(ScheduleNotFound, match="no schedule entry named 'report'"):
            call("report", db_url)


def test_a_worker_may_edit_the_schedule_and_a_client_only_read_it(
        db_url: str, worker_role_url: str, client_role_url: str) -> None:
    swf.schedules.add("w", task="t", schedule=10, repo=worker_role_url)
    assert [e.name for e in swf.schedules.list_entries(client_role_url)] == ["w"]
    with pytest.raises(DatabasePermissionError, match="may not change the beat schedule"):
        swf.schedules.pause("w", client_role_url)


def test_the_cli_edits_the_schedule_and_refuses_bad_cron_text(db_url: str) -> None:
    bad = run_cli("schedules", "add", "nightly", "--task", "app.t", "--cron", "0 3 * * 8",
                  database=db_url)
    assert bad.returncode == 1
    assert error_lines(bad.stderr) == [
        "error: schedule entry 'nightly': invalid cron text '0 3 * * 8': Invalid end range: "
        "8 > 6."]
    added = run_cli("schedules", "add", "nightly", "--task", "app.t", "--cron", "0 3 * * *",
                    "--args", "[1]", "--missed", "skip", database=db_url)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added nightly: app.t 0 3 * * *, next run ")
    swf.schedules.pause("nightly", db_url)
    listed = run_cli("schedules", "list", "--json", database=db_url)
    [entry] = json.loads(listed.stdout)
    assert (entry["name"], entry["paused"], entry["missed"], entry["args"]) == (
        "nightly", True, "skip", [1])


def test_a_shelve_schedule_is_imported_where_it_left_off(db_url: str, tmp_path: Path) -> None:
    app = Celery("old", broker="memory://")
    app.conf.beat_schedule = {
        "every-minute": {"task": "app.tick", "schedule": 60.0, "args": [1]},
        "mornings": {"task": "app.report", "schedule": crontab(minute="0", hour="7"),
                     "options": {"queue": "reports"}},
        "not-json": {"task": "app.x", "schedule": 30.0, "args": [object()]}}
    path = str(tmp_path / "celerybeat-schedule")
    old = PersistentScheduler(app, schedule_filename=path, lazy=False)  # Celery's own file
    last = dt.datetime(2026, 1, 5, 6, 30, tzinfo=dt.timezone.utc)
    old.schedule["mornings"].last_run_at = last
    old.sync()
    old.close()
    report = importing.from_shelve(path, repo=db_url)
    assert report.imported == ["every-minute", "mornings"]  # not Celery's backend_cleanup
    assert list(report.skipped) == ["not-json"]
    assert "schedule entry 'not-json': args must be JSON" in report.skipped["not-json"]
    mornings = swf.schedules.get("mornings", db_url)
    assert (mornings.source, mornings.options, mornings.schedule_text) == (
        "import", {"queue": "reports"}, "0 7 * * *")
    assert mornings.next_run_at == dt.datetime(2026, 1, 5, 7, 0, tzinfo=dt.timezone.utc)


DJANGO_TABLES = """
CREATE TABLE django_celery_beat_intervalschedule (id serial PRIMARY KEY, every integer,
    period varchar(24));
CREATE TABLE django_celery_beat_crontabschedule (id serial PRIMARY KEY, minute varchar(240),
    hour varchar(96), day_of_week varchar(64), day_of_month varchar(124),
    month_of_year varchar(64), timezone varchar(63));
CREATE TABLE django_celery_beat_solarschedule (id serial PRIMARY KEY, event varchar(24),
    latitude numeric(9, 6), longitude numeric(9, 6));
CREATE TABLE django_celery_beat_periodictask (id serial PRIMARY KEY, name varchar(200),
    task varchar(200), args text, kwargs text, queue varchar(200), exchange varchar(200),
    routing_key varchar(200), headers text, priority integer, expires timestamptz,
    one_off boolean, start_time timestamptz, enabled boolean, last_run_at timestamptz,
    total_run_count integer, date_changed timestamptz, description text,
    interval_id integer, crontab_id integer, solar_id integer, clocked_id integer);
INSERT INTO django_celery_beat_intervalschedule VALUES (1, 10, 'minutes');
INSERT INTO django_celery_beat_crontabschedule VALUES (1, '30', '2', '*', '*', '*', 'UTC');
INSERT INTO django_celery_beat_periodictask (name, task, args, kwargs, queue, headers,
    one_off, enabled, total_run_count, interval_id, crontab_id, clocked_id) VALUES
 ('poll', 'shop.poll', '[7]', '{}', 'io', '{}', false, true, 3, 1, NULL, NULL),
 ('nightly', 'shop.clean', '[]', '{"deep": true}', NULL, '{}', false, false, 0, NULL, 1, NULL),
 ('launch', 'shop.launch', '[]', '{}', NULL, '{}', true, true, 0, NULL, NULL, 1);
"""


def test_django_celery_beat_tasks_are_imported(db_url: str) -> None:
    sql(db_url, DJANGO_TABLES)
    report = importing.from_django(db_url, repo=db_url)
    assert report.imported == ["nightly", "poll"]
    assert report.skipped == {"launch": "a clocked or one-off task (no repeating schedule)"}
    poll = swf.schedules.get("poll", db_url)
    assert (poll.args, poll.options, poll.schedule_text) == ([7], {"queue": "io"}, "every 600s")
    nightly = swf.schedules.get("nightly", db_url)
    assert (nightly.kwargs, nightly.paused, nightly.schedule_text) == (
        {"deep": True}, True, "30 2 * * *")
    assert sql_value(db_url, "SELECT count(*) FROM swf.schedules WHERE source = 'import'") == 2
