"""Real ``celery beat`` processes on the schedule in PostgreSQL, with a real worker: any
number of beats fire each tick once; a beat killed inside its tick's transaction loses and
doubles nothing; missed ticks follow the entry's policy; edits apply without a restart;
workflows run on a schedule."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from swf_celery import schedules
from swf_celery.errors import ScheduleError
from tests.helpers import REDIS_URL, sql, sql_value, wait_until
from tests.schedules.conftest import runs, settle, ticks, wait_ticks

pytestmark = [pytest.mark.db, pytest.mark.slow]
SECOND = dt.timedelta(seconds=1)


def _check_once_each(db_url: str, name: str, tag: str) -> list[tuple[Any, ...]]:
    """Every tick of ``name`` one second after the last (none lost), each with one task
    that ran exactly once (none doubled); returns the ticks."""
    found = ticks(db_url, name)
    times = [t[0] for t in found]
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [SECOND] * (len(times) - 1)
    task_ids = {t[2] for t in found}
    assert len(task_ids) == len(found)
    wait_until(lambda: task_ids <= set(runs(db_url, tag)), timeout=30,
               what="every sent task to run")
    ran = runs(db_url, tag)
    assert len(set(ran)) == len(ran), "a task ran twice"
    assert set(ran) <= {t[2] for t in ticks(db_url, name)}, "a task ran with no tick"
    return found


def test_a_beat_killed_inside_its_tick_is_taken_over_with_no_tick_lost_or_doubled(
        beat_db: str, beat_worker: Any, beats: Callable[..., Any], tmp_path: Path) -> None:
    flag = tmp_path / "stall"
    env = {"SWF_TEST_EVERY": "1", "SWF_TEST_STALL": str(flag)}
    beats(beat_db, **env), beats(beat_db, **env)
    wait_ticks(beat_db, "every", 2)
    flag.touch()
    marker = Path(f"{flag}.pid")
    wait_until(lambda: marker.exists() and marker.read_text(), what="a beat to stall")
    pid_text, stalled_task = marker.read_text().split()
    before = len(ticks(beat_db, "every"))
    settle(2.0)
    # The stalled beat holds the entry (its message inserted, not committed): the other
    # beat neither fires the tick again nor gets past it.
    assert len(ticks(beat_db, "every")) == before
    os.kill(int(pid_text), signal.SIGKILL)
    killed = time.monotonic()
    wait_ticks(beat_db, "every", before + 1, timeout=10)
    taken_over = time.monotonic() - killed
    assert taken_over < 3.0
    wait_ticks(beat_db, "every", before + 6)
    found = _check_once_each(beat_db, "every", "every")
    assert stalled_task not in [t[2] for t in found]
    assert stalled_task not in runs(beat_db, "every")
    assert not any(t[5].endswith(f":{pid_text}") for t in found[before:])


@pytest.mark.long
def test_a_hung_beat_holds_its_entries_only_until_its_transaction_times_out(
        beat_db: str, beat_worker: Any, beats: Callable[..., Any], tmp_path: Path) -> None:
    flag = tmp_path / "stall"
    env = {"SWF_TEST_EVERY": "1", "SWF_TEST_STALL": str(flag)}
    beats(beat_db, **env), beats(beat_db, **env)
    wait_ticks(beat_db, "every", 2)
    flag.touch()
    marker = Path(f"{flag}.pid")
    wait_until(lambda: marker.exists() and marker.read_text(), what="a beat to stall")
    hung = time.monotonic()
    before = len(ticks(beat_db, "every"))
    # Alive but stuck inside its tick's transaction: PostgreSQL ends its session after the
    # idle-in-transaction timeout, and the other beat carries on.
    wait_ticks(beat_db, "every", before + 1, timeout=30)
    assert 8 < time.monotonic() - hung < 20
    wait_ticks(beat_db, "every", before + 4)
    found = _check_once_each(beat_db, "every", "every")
    assert marker.read_text().split()[1] not in [t[2] for t in found]


@pytest.mark.long
def test_any_number_of_beats_on_redis_send_each_tick_once(
        beat_db: str, beats: Callable[..., Any], redis_client: Any) -> None:
    from tests.helpers import worker_process
    from tests.schedules.conftest import APP

    queue = f"beat_{uuid.uuid4().hex[:8]}"
    env = {"SWF_TEST_EVERY": "1", "SWF_TEST_BROKER": REDIS_URL, "SWF_TEST_QUEUE": queue}
    with worker_process(APP, env={"SWF_DATABASE_URL": beat_db, **env}, queues=[queue]):
        for _ in range(3):
            beats(beat_db, **env)
        wait_ticks(beat_db, "every", 8)
        _check_once_each(beat_db, "every", "every")
    redis_client.delete(queue)


@pytest.mark.long
def test_entries_change_at_run_time_without_a_restart(
        beat_db: str, beat_worker: Any, beats: Callable[..., Any]) -> None:
    beats(beat_db)
    with pytest.raises(ScheduleError, match="invalid cron text '0 25 \\* \\* \\*'"):
        schedules.add("bad", task="beat_app.record", schedule="0 25 * * *", repo=beat_db)
    schedules.add("live", task="beat_app.record", schedule=1, args=["live"], repo=beat_db)
    wait_until(lambda: len(runs(beat_db, "live")) >= 2, what="the added entry to run")
    schedules.pause("live", beat_db)
    settle(1.5)
    paused_at = len(ticks(beat_db, "live"))
    settle(2.5)
    assert len(ticks(beat_db, "live")) == paused_at
    schedules.update("live", args=["changed"], schedule=dt.timedelta(seconds=1), repo=beat_db)
    schedules.resume("live", repo=beat_db)
    wait_until(lambda: len(runs(beat_db, "changed")) >= 2, what="the changed entry to run")
    entry = schedules.get("live", beat_db)
    assert entry.last_task_id in runs(beat_db, "changed") + [None]
    assert entry.last_state in ("PENDING", "SUCCESS")
    schedules.delete("live", beat_db)
    settle(1.5)
    count = len(runs(beat_db, "changed"))
    settle(2.0)
    assert len(runs(beat_db, "changed")) == count
    assert sql_value(beat_db, "SELECT count(*) FROM swf.schedule_ticks") == 0


@pytest.mark.long
def test_ticks_missed_while_every_beat_was_down_follow_each_entry_policy(
        beat_db: str, beat_worker: Any, beats: Callable[..., Any]) -> None:
    for policy in ("once", "all", "skip"):
        schedules.add(policy, task="beat_app.record", schedule=1, args=[policy],
                      missed=policy, max_missed=3, repo=beat_db)
    settle(8.0)  # no beat runs: ~8 ticks of each entry are missed
    beats(beat_db, SWF_TEST_GRACE="2")
    wait_ticks(beat_db, "skip", 3)
    settle(1.0)
    expected_old = {"once": 1, "all": 3, "skip": 0}
    for policy, count in expected_old.items():
        found = ticks(beat_db, policy)
        first_fired = sql_value(beat_db, "SELECT min(fired_at) FROM swf.schedule_ticks t JOIN "
                                         "swf.schedules s ON s.id = t.schedule_id "
                                         "WHERE s.name = %s", (policy,))
        old = [t for t in found if t[0] < first_fired - 2 * SECOND]
        assert len(old) == count, (policy, found)
        assert found[0][4] > 0, (policy, found)  # the first fired counts those missed
        wanted = len(found)
        wait_until(lambda p=policy, n=wanted: len(runs(beat_db, p)) >= n,  # type: ignore[misc]
                   what=f"{policy}'s runs")


@pytest.mark.long
def test_a_workflow_runs_on_a_schedule_and_a_running_one_blocks_the_next(
        beat_db: str, beat_worker: Any, beats: Callable[..., Any]) -> None:
    schedules.add("nightly", workflow="tests.schedules.flows:Nightly", schedule=1,
                  input={"sleep": 2.2}, skip_if_running=True, repo=beat_db)
    beats(beat_db)
    wait_until(lambda: sum(t[1] == "started" for t in ticks(beat_db, "nightly")) >= 2,
               timeout=40, what="two scheduled runs")
    found = ticks(beat_db, "nightly")
    assert {t[1] for t in found} == {"started", "skipped"}, sql(
        beat_db, "SELECT status, error, inserted_at, finished_at FROM swf.runs")
    started = [str(t[3]) for t in found if t[1] == "started"]
    wait_until(lambda: sql_value(beat_db, "SELECT count(*) FROM swf.runs WHERE id::text = "
                                          "ANY (%s) AND status = 'completed'", (started,))
               == len(started), timeout=30, what="the scheduled runs to complete")
    spans = sql(beat_db, "SELECT id::text, inserted_at, finished_at, output FROM swf.runs "
                         "ORDER BY inserted_at")
    assert [s[0] for s in spans] == started
    assert all(s[3]["report"] == {"reported": True} for s in spans)
    # Each run started only after the previous one had finished.
    assert all(later[1] >= earlier[2] for earlier, later in zip(spans, spans[1:],
                                                                 strict=False))


@pytest.mark.long
def test_the_schedule_of_celerys_own_beat_is_imported_and_runs_here(
        beat_db: str, beats: Callable[..., Any], tmp_path: Path) -> None:
    from tests.helpers import ROOT, run_cli, worker_process
    from tests.schedules.conftest import APP

    path = tmp_path / "celerybeat-schedule"
    log = tmp_path / "old-beat.log"
    env = {**os.environ, "SWF_DATABASE_URL": beat_db, "SWF_TEST_EVERY": "1",
           "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        old = subprocess.Popen([sys.executable, "-m", "celery", "-A", APP, "beat", "-S",
                                "celery.beat:PersistentScheduler", "-s", str(path),
                                "--loglevel=INFO"], stdout=out, stderr=subprocess.STDOUT,
                               env=env, cwd=str(ROOT))
    try:
        wait_until(lambda: log.read_text().count("Sending due task every") >= 2,
                   what="Celery's own beat to send the entry twice")
    finally:
        old.terminate()
        old.wait(15)
    imported = run_cli("schedules", "import", "--shelve", str(path), database=beat_db)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "imported 1: every"
    entry = schedules.get("every", beat_db)
    assert (entry.source, entry.task, entry.args) == ("import", "beat_app.record", ["every"])
    sql(beat_db, "SELECT swf.queue_purge('celery')")  # what the old beat sent
    with worker_process(APP, env={"SWF_DATABASE_URL": beat_db}):
        beats(beat_db)  # its beat_schedule is empty: the imported entry is kept
        wait_ticks(beat_db, "every", 3)
        _check_once_each(beat_db, "every", "every")
