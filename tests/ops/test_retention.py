"""Retention: each store keeps what its policy says, in batches, one cleaner at a time."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

import swf_celery
from swf_celery.errors import ConfigurationError
from swf_celery.ops.retention import RetentionPolicy, cleanup, parse_age
from tests.helpers import (
    create_task_runs,
    kombu_message,
    pg_url,
    run_cli,
    sql,
    sql_value,
    swf_url,
    wait_until,
    worker_process,
)

DAY = dt.timedelta(days=1)


def add_run(url: str, status: str, finished_days_ago: float | None) -> str:
    """A run with one step state and one step task, finished that many days ago."""
    run_id = str(uuid.uuid4())
    finished = (None if finished_days_ago is None
                else dt.datetime.now(dt.timezone.utc) - finished_days_ago * DAY)
    sql(url, "INSERT INTO swf.runs (id, flow_slug, status, total_steps, remaining_steps, "
             "finished_at) VALUES (%s, 'flow', %s, 1, 0, %s)", (run_id, status, finished))
    sql(url, "INSERT INTO swf.step_states (run_id, step_name, step_index, depends_on, "
             "dependents, remaining_deps, status, execution, max_attempts, retry_delay_ms) "
             "VALUES (%s, 'a', 0, '{}', '{}', 0, 'completed', 'local', 1, 0)", (run_id,))
    sql(url, "INSERT INTO swf.step_tasks (run_id, step_name, task_index, task_id, execution, "
             "status) VALUES (%s, 'a', 0, %s, 'local', 'completed')", (run_id, str(uuid.uuid4())))
    return run_id


def runs(url: str) -> set[str]:
    return {str(r[0]) for r in sql(url, "SELECT id FROM swf.runs")}


def test_finished_runs_go_with_their_steps_after_30_days(db_url: str) -> None:
    old = [add_run(db_url, status, 40) for status in ("completed", "failed", "cancelled")]
    recent = add_run(db_url, "completed", 3)
    running = add_run(db_url, "in_progress", None)
    report = cleanup(db_url, RetentionPolicy(batch=2))  # two statements for three runs
    assert report.deleted["runs"] == 3 and not report.busy
    assert runs(db_url) == {recent, running}
    assert sql_value(db_url, "SELECT count(*) FROM swf.step_states WHERE run_id = ANY(%s)",
                     (old,)) == 0
    assert sql_value(db_url, "SELECT count(*) FROM swf.step_tasks") == 2


def archive_age(url: str, table: str, days: float) -> None:
    sql(url, pgsql.SQL("UPDATE {} SET archived_at = now() - %s").format(
        pgsql.Identifier(*table.split("."))), (days * DAY,))


def test_dead_letters_and_acked_archive_go_after_7_days(db_url: str) -> None:
    for i in range(3):
        sql(db_url, "SELECT swf.queue_send('jobs', %s)", (Jsonb(kombu_message(f"t{i}")),))
    sql(db_url, "SELECT swf.queue_reject('jobs', ARRAY[1]::bigint[], false, 'malformed')")
    sql(db_url, "SELECT swf.queue_ack('jobs', ARRAY[2]::bigint[], true)")
    table = "pgmq.a_" + sql_value(db_url, "SELECT pgmq_name FROM swf.queues WHERE name='jobs'")
    archive_age(db_url, table, 8)
    sql(db_url, "SELECT swf.queue_ack('jobs', ARRAY[3]::bigint[], true)")  # fresh
    # Transient queues' dead letters go to the same store.
    sql(db_url, "SELECT swf.queue_ensure('r.reply.celery.pidbox', 10000)")
    sql(db_url, "SELECT swf.queue_send('r.reply.celery.pidbox', %s)",
        (Jsonb(kombu_message("t9")),))
    sql(db_url, "SELECT swf.queue_reject('r.reply.celery.pidbox', ARRAY(SELECT msg_id FROM "
                "swf.transient_messages), false, 'rejected')")
    sql(db_url, "UPDATE swf.dead_letters SET dead_at = now() - %s", (8 * DAY,))

    dry = cleanup(db_url, dry_run=True)
    assert (dry.deleted["dead_letters"], dry.deleted["acked"]) == (2, 1)
    assert sql_value(db_url, pgsql.SQL("SELECT count(*) FROM {}").format(
        pgsql.Identifier(*table.split(".")))) + sql_value(
        db_url, "SELECT count(*) FROM swf.dead_letters") == 4

    report = cleanup(db_url, RetentionPolicy(acked=None))
    assert (report.deleted["dead_letters"], "acked" in report.deleted) == (2, False)
    assert sql(db_url, pgsql.SQL("SELECT msg_id FROM {} ORDER BY 1").format(
        pgsql.Identifier(*table.split(".")))) == [(2,), (3,)]
    assert cleanup(db_url).deleted["acked"] == 1
    assert sql_value(db_url, "SELECT count(*) FROM swf.transient_archive") == 0


def test_acknowledged_channel_messages_go_after_7_days(db_url: str) -> None:
    old = swf_celery.send_with_notify("orders", {"n": 1}, db_url)
    swf_celery.acknowledge("orders", old, db_url)
    queue = sql_value(db_url, "SELECT queue_name FROM swf.channels WHERE channel = 'orders'")
    archive_age(db_url, f"pgmq.a_{queue}", 8)
    new = swf_celery.send_with_notify("orders", {"n": 2}, db_url)
    swf_celery.acknowledge("orders", new, db_url)
    pending = swf_celery.send_with_notify("orders", {"n": 3}, db_url)
    assert cleanup(db_url).deleted["channels"] == 1
    assert swf_celery.get_message("orders", old, db_url) is None
    assert swf_celery.get_message("orders", new, db_url) is not None
    assert swf_celery.get_message("orders", pending, db_url) is not None


def test_results_go_when_their_expiry_passed(db_url: str) -> None:
    for task_id, expires in (("gone", "now() - interval '1 hour'"),
                             ("kept", "now() + interval '1 hour'"), ("forever", "NULL")):
        sql(db_url, pgsql.SQL("INSERT INTO swf.task_results (task_id, status, payload, "
                              "date_done, expires_at) VALUES (%s, 'SUCCESS', '\\x00', "
                              "now() - interval '60 days', {})").format(pgsql.SQL(expires)),
            (task_id,))
    sql(db_url, "INSERT INTO swf.group_results (group_id, payload, expires_at) "
                "VALUES ('g', '\\x00', now() - interval '1 hour')")
    assert cleanup(db_url).deleted["results"] == 2
    assert {r[0] for r in sql(db_url, "SELECT task_id FROM swf.task_results")} == {
        "kept", "forever"}
    # --older-than also removes results stored without an expiry.
    assert cleanup(db_url, RetentionPolicy().older_than(30 * DAY)).deleted["results"] == 1


def test_one_cleaner_at_a_time(db_url: str) -> None:
    add_run(db_url, "completed", 40)
    with psycopg.connect(pg_url(db_url)) as other:
        other.execute("SELECT swf._retention_lock()")  # held until this transaction ends
        report = cleanup(db_url)
        assert report.busy and report.total == 0
    assert cleanup(db_url).deleted["runs"] == 1


def test_settings_and_ages() -> None:
    policy = RetentionPolicy.from_conf({"swf_retention_runs": "90d",
                                        "swf_retention_dead_letters": 0,
                                        "swf_retention_archive": 3600,
                                        "swf_retention_batch": 50})
    assert policy.runs == 90 * DAY and policy.dead_letters is None
    assert policy.acked == dt.timedelta(hours=1) and policy.batch == 50
    assert RetentionPolicy.from_conf(None) == RetentionPolicy()
    assert parse_age("12h") == dt.timedelta(hours=12) and parse_age("2w") == 14 * DAY
    with pytest.raises(ConfigurationError, match="swf_retention_runs"):
        RetentionPolicy.from_conf({"swf_retention_runs": "a month"})
    with pytest.raises(ConfigurationError, match="swf_retention_batch"):
        RetentionPolicy.from_conf({"swf_retention_batch": 0})


def test_cleanup_command(db_url: str) -> None:
    add_run(db_url, "completed", 10)
    dry = run_cli("cleanup", "--older-than", "7d", "--dry-run", "--json", database=db_url)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["deleted"]["runs"] == 1
    assert len(runs(db_url)) == 1
    done = run_cli("cleanup", "--older-than", "7d", database=db_url)
    assert done.returncode == 0 and "runs: deleted 1" in done.stdout, done.stderr
    assert runs(db_url) == set()
    bad = run_cli("cleanup", "--older-than", "soon", database=db_url)
    assert bad.returncode != 0 and "--older-than" in bad.stderr


@pytest.mark.slow
def test_worker_cleans_up_in_a_bootstep(db_url: str) -> None:
    create_task_runs(db_url)
    old = add_run(db_url, "completed", 40)
    recent = add_run(db_url, "completed", 1)
    env: dict[str, Any] = {"SWF_TEST_BROKER": swf_url(db_url), "SWF_TEST_RETENTION": "1"}
    with worker_process("tests.ops.retention_app", env=env, pool="solo") as proc:
        wait_until(lambda: old not in runs(db_url), timeout=60, what="retention pass",
                   proc=proc)
    assert runs(db_url) == {recent}


@pytest.mark.slow
def test_a_least_privilege_worker_says_once_what_to_do_then_cleans_up_as_an_operator(
        db_url: str, worker_role_url: str) -> None:
    from urllib.parse import urlsplit

    from swf_celery.ops import grants
    from swf_celery.testing import read_log

    role = urlsplit(worker_role_url).username
    old = add_run(db_url, "completed", 40)
    env: dict[str, Any] = {"SWF_TEST_BROKER": swf_url(worker_role_url),
                           "SWF_TEST_RETENTION": "0.5"}
    with worker_process("tests.ops.retention_app", env=env, pool="solo") as proc:
        wait_until(lambda: "does not clean up" in read_log(proc), what="the warning", proc=proc)
        assert old in runs(db_url)
        # Made an operator while it runs: it notices at its next check and cleans up.
        grants.grant(role, "operator", db_url)  # type: ignore[arg-type]
        wait_until(lambda: old not in runs(db_url), what="cleanup as an operator", proc=proc)
        log = read_log(proc)
    assert log.count("does not clean up") == 1, log
    warning = next(line for line in log.splitlines() if "does not clean up" in line)
    assert f"role {role!r} is a worker" in warning
    assert "swf-celery cleanup" in warning and f"swf-celery grant {role} --operator" in warning
    assert "swf_retention = False" in warning
    assert "is an operator now" in log
