"""Least privilege, end to end: a real ``celery -A app worker`` logs in as a role granted
``--worker``, the caller as ``--client``, an operator as ``--operator``; none is a
superuser. Run against the embedded server and (``make test``'s second pass) PostgreSQL 15."""

from __future__ import annotations

import re
from importlib import resources

import psycopg
import pytest
from celery import Celery, chord

import swf_celery as swf
from swf_celery.errors import ArgumentError, DatabasePermissionError, WorkflowFailed
from swf_celery.ops import grants
from tests.helpers import (
    error_lines,
    read_log,
    read_queue,
    run_cli,
    sql,
    sql_value,
    swf_url,
    worker_process,
)
from tests.security import role_app

pytestmark = [pytest.mark.db, pytest.mark.slow]


def _client_app(url: str) -> Celery:
    """The caller's side of role_app: sends by name, reads results, as the client role."""
    app = Celery("role_client", broker=swf_url(url), backend=swf_url(url),
                 set_as_current=False)
    app.conf.update(task_default_queue=role_app.QUEUE)
    return app


def _not_superuser(url: str) -> None:
    assert sql_value(url, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False


def test_worker_and_client_roles_run_tasks_chords_and_workflows(
        worker_role_url: str, client_role_url: str) -> None:
    _not_superuser(worker_role_url)
    _not_superuser(client_role_url)
    client = _client_app(client_role_url)
    events = swf.listen("workflow_events", client_role_url)  # the engine's run events
    try:
        with worker_process("tests.security.role_app", queues=[role_app.QUEUE],
                            env={"SWF_ROLE_URL": worker_role_url}, extra_args=["-E"]) as proc:
            assert client.send_task("tests.security.role_app.add", (2, 3)).get(timeout=60) == 5
            header = [client.signature("tests.security.role_app.add", (i, i))
                      for i in range(3)]
            callback = client.signature("tests.security.role_app.total")
            assert chord(header)(callback).get(timeout=60) == 6
            result = swf.Executor.execute(role_app.TwoSteps, {"n": 4}, client_role_url,
                                          timeout=60_000)
            assert result.output == {"second": 50}
            statuses = []
            while (note := events.get(timeout=10)) is not None:
                if result.run_id in (note.payload or ""):
                    statuses.append(note.payload)
                if any('"completed"' in p and '"second"' in p for p in statuses):
                    break
            assert statuses, "no workflow events reached the client role"
            # ... as stored messages that the client role may read back by id
            assert note is not None and note.message_id is not None
            stored = swf.get_message("workflow_events", note.message_id, client_role_url)
            assert stored is not None and stored.body["run_id"] == result.run_id
        log = read_log(proc)
        assert "permission denied" not in log.lower(), log[-3000:]
    finally:
        swf.unlisten(events)
        client.close()


def test_a_client_cannot_take_or_delete_queued_work(client_role_url: str) -> None:
    client = _client_app(client_role_url)
    try:
        client.send_task("tests.security.role_app.add", (1, 1))  # publishing is allowed
    finally:
        client.close()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        read_queue(client_role_url, role_app.QUEUE)
    run_id = swf.Executor.start(role_app.TwoSteps, {"n": 1}, client_role_url)
    with pytest.raises(DatabasePermissionError):
        swf.cancel_workflow_run(run_id, client_role_url)


def test_a_worker_cannot_rewrite_history(worker_role_url: str) -> None:
    for statement in ("DELETE FROM swf.runs", "INSERT INTO swf.flows (slug) VALUES ('x')",
                      "TRUNCATE swf.task_results", "CREATE TABLE pgmq.evil (x int)"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            sql(worker_role_url, statement)


def test_a_role_without_grants_cannot_create_queues(db_url: str, worker_role_url: str) -> None:
    role = worker_role_url.split("://")[1].split(":")[0]
    sql(db_url, f'REVOKE ALL ON FUNCTION swf.queue_ensure(text, bigint) FROM "{role}"')
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        sql(worker_role_url, "SELECT swf.queue_ensure('made_by_anyone')")


def test_operator_role_pauses_cancels_and_retries(client_role_url: str,
                                                  operator_role_url: str) -> None:
    _not_superuser(operator_role_url)
    run_id = swf.Executor.start(role_app.TwoSteps, {"n": 1}, client_role_url)  # no worker
    for command, status in (("pause", "paused"), ("resume", "in_progress"),
                            ("cancel", "cancelled")):
        proc = run_cli(command, run_id, database=operator_role_url)
        assert proc.returncode == 0, proc.stderr
        assert status in proc.stdout
    assert swf.get_run_status(run_id, client_role_url).status == "cancelled"
    failed = swf.Executor.start(role_app.Failing, {}, client_role_url)
    sql(operator_role_url, "UPDATE swf.runs SET status = 'failed' WHERE id = %s", (failed,))
    with pytest.raises(WorkflowFailed):
        swf.Executor.wait(failed, client_role_url, 100)
    new_id = swf.retry_failed_workflow(failed, operator_role_url)
    assert swf.get_run_status(new_id, client_role_url).retry_of == failed


def test_grant_cli_names_the_role_and_refuses_bad_input(db_url: str) -> None:
    proc = run_cli("grant", "no_such_role_x", "--worker", database=db_url)
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [
        "error: role 'no_such_role_x' does not exist: CREATE ROLE … LOGIN PASSWORD … first "
        "(swf-celery grants privileges, it creates no role)"]
    proc = run_cli("grant", "postgres", database=db_url)
    assert proc.returncode == 1 and "--worker, --client or --operator" in proc.stderr
    with pytest.raises(ArgumentError, match="unknown kind"):
        grants.grant("postgres", "admin", db_url)  # type: ignore[arg-type]


def test_a_quoted_role_name_is_an_identifier_not_sql(db_url: str) -> None:
    role = 'odd"; DROP TABLE swf.runs; --'
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE ROLE {}").format(psycopg.sql.Identifier(role)))
    try:
        proc = run_cli("grant", role, "--client", database=db_url)
        assert proc.returncode == 0, proc.stderr
        assert sql_value(db_url, "SELECT to_regclass('swf.runs') IS NOT NULL")
        # Granted, as a client: it starts runs through the functions, it reads the table.
        assert sql_value(db_url, "SELECT has_table_privilege(%s, 'swf.runs', 'SELECT')",
                         (role,))
        assert sql_value(db_url, "SELECT part FROM swf.roles WHERE role = %s", (role,)) == "client"
    finally:
        sql(db_url, "DELETE FROM swf.roles WHERE role = %s", (role,))
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(
                psycopg.sql.Identifier(role)))
            conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


def test_every_table_of_the_schema_is_granted_to_someone(db_url: str) -> None:
    text = resources.files("swf_celery.ops").joinpath("grants.sql").read_text()
    named = set(re.findall(r"swf\.([a-z_]+)", text))
    tables = {row[0] for row in sql(db_url, "SELECT tablename FROM pg_tables "
                                            "WHERE schemaname = 'swf'")}
    assert tables - named == set(), "tables no block of grants.sql names (see its rule)"


def test_every_part_counts_skipped_notifies_and_reads_the_count(
        client_role_url: str, worker_role_url: str, operator_role_url: str) -> None:
    # Sessions of every part send NOTIFYs (results, channel messages), and swf.notify_hint
    # counts the ones it skips in their name; listeners of every part read the count.
    for url in (client_role_url, worker_role_url, operator_role_url):
        _not_superuser(url)
        before = sql_value(url, "SELECT swf.notify_skipped()")
        sql(url, "SELECT nextval('swf.notify_skips')")
        assert sql_value(url, "SELECT swf.notify_skipped()") == before + 1
