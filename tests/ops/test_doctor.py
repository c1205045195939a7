"""`swf-celery doctor`: each finding made for real (an idle transaction, a stalled listener,
a dead-lettered step, a lost message, a paused run, a queue nobody consumes, a task not
registered, an old function version, dead rows) and seen with its remedy; the command's
exit status and JSON. The worker killed with a message in hand is in test_doctor_worker.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import swf_celery as swf
from swf_celery.ops.doctor import Limits, explain_run
from swf_celery.workflows import definition, steps
from tests.helpers import pg_url, read_queue, run_cli, sql, sql_value

pytestmark = pytest.mark.db

NOW = Limits(stalled_after=0.5, consumer_gone_after=0)


@pytest.fixture
def session(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_url(db_url), autocommit=True,
                         application_name="doctor-test-session") as conn:
        yield conn


def _flow(slug: str, queue: str, **options: Any) -> definition.WorkflowDef:
    from tests.workflows import engine_app

    opts = steps.parse_options({"queue": queue, **options}, where="test")
    return definition.build(slug, [("work", engine_app.noop, opts)])


def _start_run(db_url: str, queue: str, **options: Any) -> str:
    from swf_celery.db import resolve
    from swf_celery.workflows import coordinator

    wf = _flow(f"doctor.{queue}", queue, **options)
    return str(coordinator.start_run(resolve(db_url), wf, {"n": 1}))


def test_an_idle_transaction_holding_back_vacuum_and_its_dead_rows(
        db_url: str, session: psycopg.Connection[Any]) -> None:
    session.execute("BEGIN")
    session.execute("SELECT txid_current()")  # a transaction id: the horizon stops here
    pid = session.info.backend_pid
    with psycopg.connect(pg_url(db_url), autocommit=True) as conn:
        conn.execute("ALTER TABLE swf.revoked_tasks SET (autovacuum_enabled = false)")
        conn.execute("INSERT INTO swf.revoked_tasks (task_id) "
                     "SELECT 'doctor-' || i FROM generate_series(1, 3000) i")
        conn.execute("DELETE FROM swf.revoked_tasks")
        conn.execute("VACUUM swf.revoked_tasks")  # removes nothing: the session holds them
        conn.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(1.0)
    report = swf.doctor(db_url, limits=Limits(stalled_after=0.5, dead_rows=1000))
    [held] = [f for f in report.by_check("vacuum_horizon") if f.details["pid"] == pid]
    assert held.severity == "error"
    assert "idle in transaction" in held.summary and "doctor-test-session" in held.summary
    assert f"pg_terminate_backend({pid})" in held.remedy
    [dead] = [f for f in report.by_check("dead_rows") if f.subject == "swf.revoked_tasks"]
    assert dead.details["dead"] >= 3000 and "VACUUM" in dead.remedy
    assert report.severity == "error" and report.exit_status == 2
    session.execute("ROLLBACK")
    assert not swf.doctor(db_url, limits=Limits(stalled_after=0.5)).by_check("vacuum_horizon")


def test_a_listener_that_stopped_reading(db_url: str, session: psycopg.Connection[Any]) -> None:
    session.execute("LISTEN doctor_channel")
    session.execute("BEGIN")
    session.execute("SELECT 1")  # in a transaction, a session takes no notification
    time.sleep(1.0)
    sql(db_url, "NOTIFY doctor_channel, 'x'")
    report = swf.doctor(db_url, limits=Limits(stalled_after=0.5))
    [listener] = [f for f in report.by_check("listener")
                  if f.details["pid"] == session.info.backend_pid]
    assert listener.severity == "warning"
    assert "notification queue" in listener.summary
    assert f"pg_terminate_backend({session.info.backend_pid})" in listener.remedy
    [queue] = report.by_check("notification_queue")
    assert queue.details["usage"] >= 0
    session.execute("ROLLBACK")


def test_a_run_waiting_on_a_dead_lettered_step(db_url: str) -> None:
    run_id = _start_run(db_url, "doctor_dead", max_attempts=3, retry_delay=600)
    [(msg_id, receipt, _m, _p)] = read_queue(db_url, "doctor_dead")  # a consumer has it
    sql(db_url, "SELECT swf.queue_reject('doctor_dead', ARRAY[%s]::bigint[], false, "
                "'delivered too often', ARRAY[%s])", (msg_id, receipt))
    time.sleep(0.6)
    findings = explain_run(run_id, db_url, limits=NOW)
    [dead] = [f for f in findings if f.check == "dead_lettered"]
    assert dead.severity == "warning" and dead.subject == f"run {run_id}"
    assert "dead-lettered: delivered too often" in dead.summary
    assert "next attempt is due in 10 min" in dead.summary
    assert "dead letter" in dead.remedy
    report = swf.doctor(db_url, limits=NOW)
    assert run_id in report.stalled_runs
    [letters] = report.by_check("dead_letters")
    assert letters.details == {**letters.details, "queue": "doctor_dead", "count": 1}
    assert "requeue or purge" in letters.remedy


def test_a_message_taken_and_lost_strands_the_run(db_url: str) -> None:
    """A consumer that acknowledges on delivery (acks early) and dies before starting."""
    run_id = _start_run(db_url, "doctor_lost", max_attempts=1)
    assert len(read_queue(db_url, "doctor_lost", no_ack=True)) == 1
    [missing] = explain_run(run_id, db_url, limits=NOW)
    assert missing.check == "message_missing" and missing.severity == "error"
    assert "in no queue" in missing.summary
    assert "swf-celery retry" in missing.remedy


def test_a_queue_nobody_consumes_and_a_held_message_whose_worker_is_gone(db_url: str) -> None:
    idle = _start_run(db_url, "doctor_idle")
    time.sleep(0.6)
    [finding] = explain_run(idle, db_url, limits=NOW)
    assert finding.check == "queue_consumers" and finding.severity == "error"
    assert "celery -A APP worker -Q doctor_idle" in finding.remedy
    report = swf.doctor(db_url, limits=NOW)
    assert [f.subject for f in report.by_check("queue_consumers")] == \
        ["queue doctor_idle", f"run {idle}"]
    held = _start_run(db_url, "doctor_held")
    read_queue(db_url, "doctor_held", vt=30)  # its reader's session ends: nobody extends it
    [gone] = explain_run(held, db_url, limits=Limits(stalled_after=0, visibility_timeout=60))
    assert gone.check == "held_by_gone_worker" and gone.severity == "warning"
    assert "worker is gone" in gone.summary and "invisible until" in gone.summary


def test_a_paused_run(db_url: str) -> None:
    run_id = _start_run(db_url, "doctor_paused")
    swf.pause_workflow_run(run_id, db_url)
    findings = explain_run(run_id, db_url, limits=NOW)
    assert {f.check for f in findings} == {"run_paused"}
    assert all(f"swf-celery resume {run_id}" == f.remedy for f in findings)


def test_a_step_whose_task_the_worker_does_not_have(db_url: str) -> None:
    """The worker reports the missing registration (swf_celery.workflows.worker_task): the
    attempt fails with it and the next one waits for its retry."""
    from swf_celery.db import resolve
    from swf_celery.workflows import coordinator

    run_id = _start_run(db_url, "doctor_unregistered", max_attempts=2, retry_delay=600)
    [(_msg, _r, message, _p)] = read_queue(db_url, "doctor_unregistered")
    task_id = message["headers"]["id"]
    db = resolve(db_url)
    assert coordinator.start_task(db, task_id) is not None
    coordinator.fail_task(db, task_id, "task 'tests.workflows.engine_app.noop' is not "
                                       "registered on worker gpu@host")
    [finding] = explain_run(run_id, db_url, limits=NOW)
    assert finding.check == "task_not_registered" and finding.severity == "error"
    assert "import the module defining tests.workflows.engine_app.noop" in finding.remedy


def test_an_old_function_version(db_url: str) -> None:
    """The database's functions as an older release left them: a function file's text
    differs from this code's (here: one function changed) and its record says so."""
    sql(db_url, "CREATE OR REPLACE FUNCTION swf.notify_queue_limit() RETURNS double precision "
                "LANGUAGE sql IMMUTABLE AS $$ SELECT 0.9::float8 $$")
    sql(db_url, "UPDATE swf.schema_functions SET checksum = 'older', code_version = '0.0.9' "
                "WHERE name = 'notifications'")
    report = swf.doctor(db_url)
    [old] = report.by_check("functions")
    assert old.severity == "error" and old.subject == "sql/functions/notifications.sql"
    assert "0.0.9" in old.summary and "swf-celery migrate" in old.remedy
    result = run_cli("doctor", "--json", database=db_url)
    assert result.returncode == 2, result.stderr
    data = json.loads(result.stdout)
    assert data["severity"] == "error"
    assert any(f["check"] == "functions" for f in data["findings"])


def test_retention_not_running(db_url: str) -> None:
    run_id = _start_run(db_url, "doctor_old")
    swf.cancel_workflow_run(run_id, db_url)
    sql(db_url, "UPDATE swf.runs SET finished_at = now() - interval '40 days' WHERE id = %s",
        (run_id,))
    [finding] = swf.doctor(db_url).by_check("retention")
    assert finding.severity == "warning" and finding.details["runs"] == 1
    assert "swf-celery cleanup" in finding.remedy


def test_a_healthy_database_exits_zero(db_url: str) -> None:
    result = run_cli("doctor", database=db_url)
    assert "schema version" in result.stdout and "connections" in result.stdout
    # The server's connections are every database's (a shared server may be busy).
    busy = any(line.startswith(("WARN", "ERROR")) and " connections " in line
               for line in result.stdout.splitlines())
    assert result.returncode in ((1, 2) if busy else (0,)), result.stdout + result.stderr
    assert sql_value(db_url, "SELECT count(*) FROM swf.runs") == 0


def test_a_held_message_counts_as_abandoned_once_its_extensions_stop() -> None:
    """A live worker extends what it holds every third of the visibility timeout."""
    limits = Limits(visibility_timeout=60)
    assert not limits.not_extended(59)   # just delivered or extended
    assert not limits.not_extended(39)   # an extension is due about now
    assert limits.not_extended(30)       # 30 s without one: its worker is gone
