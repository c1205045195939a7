"""What each part may do, tried with plain SQL: every table, every SECURITY DEFINER function,
for a client, a worker and an operator (roles granted by ``swf-celery grant``), and the
settings of every such function in the live catalog."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

import swf_celery as swf
from swf_celery.transport.storage import QueueStorage
from tests.helpers import kombu_message, sql, sql_value

pytestmark = pytest.mark.db

PARTS = ("client", "worker", "operator")
ALL = set(PARTS)
S, I, U, D = "SELECT", "INSERT", "UPDATE", "DELETE"  # noqa: E741
READ = {"client": {S}, "worker": {S}, "operator": {S, I, U, D}}

#: Direct privileges each part has on each table (the operator: all four everywhere).
TABLES: dict[str, dict[str, set[str]]] = {
    "swf.schema_migrations": READ, "swf.schema_functions": READ,
    "swf.queues": READ, "swf.queue_bindings": READ, "swf.channels": READ,
    "swf.flows": {"client": {S, I, U}, "worker": {S}},
    "swf.flow_steps": {"client": {S, I, D}, "worker": {S}},
    "swf.runs": READ, "swf.step_states": READ, "swf.step_tasks": READ,
    "swf.queue_waiters": {}, "swf.queue_sleepers": {},
    "swf.roles": {}, "swf.flow_keys": READ, "swf.flow_turns": {},
    "swf.idempotency_keys": {}, "swf.run_signals": {},
    "swf.revoked_tasks": {"worker": {S}},
    "swf.revoked_stamps": {},  # through swf.task_revoke_stamped / swf.task_stamp_revokes
    "swf.task_results": {"client": {S, D}, "worker": {S, I, U, D}},
    "swf.group_results": {"client": {S, I, D}, "worker": {S, I, U, D}},
    "swf.chords": {"client": {S, I, U}, "worker": {S, I, U, D}},
    "swf.chord_parts": {"client": {S, I, D}, "worker": {S, I, U, D}},
    "swf.chord_additions": {"worker": {S, I}},
    "swf.task_graphs": {"client": {S, I, U}},
    "swf.transient_messages": {"client": {I}, "worker": {S, I, U, D}},
    "swf.transient_archive": {"worker": {S, I}},
    "swf.dead_letters": {"worker": {S, I}},
    "swf.schedules": READ, "swf.schedule_ticks": READ,
    "pgmq.meta": {"client": {S}, "worker": {S}},
    "queue": {"client": {I}, "worker": {S, I, U, D}},        # a broker queue's table
    "archive": {"client": {I}, "worker": {S, I, U, D}},      # and its archive
    "channel": {"client": {S, I, U, D}, "worker": {S, I, U, D}},  # a channel's table
}

#: Who may call each SECURITY DEFINER function (with the arguments of ARGS); the rest are
#: refused with insufficient_privilege before anything happens.
FUNCTIONS: dict[str, set[str]] = {
    "queue_ensure": ALL, "queue_size": ALL, "queue_arm": ALL, "queue_touch": ALL,
    "queue_sleep": ALL, "queue_pass_wake": ALL, "queue_wake_up": ALL, "queue_bind": ALL,
    "task_revoke": ALL, "task_revokes": ALL, "ensure_channel": ALL,
    "task_revoke_stamped": ALL, "task_stamp_revokes": ALL,
    "start_run": ALL, "expire_tasks": ALL, "run_tick": ALL, "running_tasks": ALL,
    "claim_local_tasks": ALL, "start_task": ALL, "complete_task": ALL, "fail_task": ALL,
    "abandon_task": ALL, "_grant_channels": ALL, "queue_send": ALL, "_queue_wake": ALL,
    "queue_send_many": ALL,
    "drive_run": ALL, "skip_task": ALL, "signal_run": {"client", "operator"},
    "replay_run": {"client", "operator"},
    "queue_unbind": {"worker", "operator"}, "queue_reap": {"worker", "operator"},
    "sweep_timeouts": {"worker", "operator"}, "retention_runs": {"operator"},
    "retention_archives": {"operator"}, "retention_results": {"operator"},
    "retention_task_graphs": {"operator"}, "retention_flows": {"operator"},
    "retention_queues": {"operator"}, "caller_part": ALL,
    "queue_drop": {"operator"}, "queue_purge": {"operator"}, "cancel_canvas": {"operator"},
    "queue_requeue_dead_letters": {"operator"}, "queue_purge_dead_letters": {"operator"},
    "pause_run": {"operator"}, "resume_run": {"operator"}, "cancel_run": {"operator"},
    "retry_run": {"operator"},
    "_grant_channel": ALL,  # only a channel's tables, only to roles granted a part
    "queue_mark_limited": ALL, "idempotency_claim": ALL,
    "queue_read_limited": {"worker", "operator"}, "hold_key": {"worker", "operator"},
    "release_key": {"worker", "operator"}, "idempotency_expire": {"operator"},
    "schedule_put": {"worker", "operator"}, "schedule_pause": {"worker", "operator"},
    "schedule_delete": {"worker", "operator"}, "schedule_prune": {"worker", "operator"},
    "schedule_due": {"worker", "operator"}, "schedule_fired": {"worker", "operator"},
}
#: Arguments that reach each function's check (default: NULL for every argument).
ARGS: dict[str, str] = {
    "queue_ensure": "'made_by_test'", "queue_drop": "'jobs'", "queue_size": "'jobs'",
    "queue_purge": "'jobs'", "queue_arm": "ARRAY['jobs']", "queue_touch": "ARRAY['jobs']",
    "queue_sleep": "ARRAY['jobs'], 'swfw_0123456789abcdef', pg_backend_pid()",
    "queue_pass_wake": "'swfq_jobs', 'swfw_0123456789abcdef'",
    "queue_wake_up": "ARRAY['jobs'], 'swfw_0123456789abcdef'",
    "queue_bind": "'ex', 'k', NULL, 'jobs'", "queue_unbind": "'ex', 'k', 'jobs'",
    "task_revoke": "ARRAY['t-1']", "task_revokes": "3600, 10",
    "task_revoke_stamped": "jsonb_build_object('monitoring_id', 'm-1')",
    "task_stamp_revokes": "0, 3600, 10",
    "ensure_channel": "'probe', 'swf_ch_probe'",
    "queue_send": "'jobs', jsonb_build_object('body', 'e30=')",
    "queue_send_many": "'jobs', ARRAY[jsonb_build_object('body', 'e30=')]",
    "_grant_channel": "%(channel)s, NULL", "retention_archives": "'acked', now(), 1, true",
    "retention_runs": "now(), 1, true", "retention_results": "now(), 1, true",
    "retention_task_graphs": "now(), 1, true", "retention_flows": "now(), 1, true",
    "retention_queues": "now(), 1, true",
    "pause_run": "%(run)s", "resume_run": "%(run)s", "cancel_run": "%(run)s, 'x', false",
    "retry_run": "%(run)s, true", "cancel_canvas": "'root'",
    "queue_requeue_dead_letters": "'jobs', NULL", "queue_purge_dead_letters": "'jobs', NULL",
    "queue_mark_limited": "'jobs'", "idempotency_claim": "'task', 'k', 'id-1', 60",
    "queue_read_limited": "'jobs', 1, 30, NULL, NULL", "hold_key": "'k', now(), NULL",
    "release_key": "'k'", "idempotency_expire": "10",
}


@pytest.fixture
def parts(db_url: str, client_role_url: str, worker_role_url: str,
          operator_role_url: str) -> Iterator[dict[str, str]]:
    """The three roles' URLs, a durable queue with a message, a channel, a run."""
    sql(db_url, "SELECT swf.queue_send('jobs', %s)", (Jsonb(kombu_message("t-1")),))
    swf.send_with_notify("probe", {"n": 1}, db_url)
    yield {"client": client_role_url, "worker": worker_role_url, "operator": operator_role_url}


def _table(db_url: str, name: str) -> str:
    pgmq = {"queue": ("q_", "jobs"), "archive": ("a_", "jobs")}
    if name in pgmq:
        prefix, queue = pgmq[name]
        return "pgmq." + prefix + sql_value(db_url, "SELECT pgmq_name FROM swf.queues "
                                                    "WHERE name = %s", (queue,))
    if name == "channel":
        return "pgmq.q_" + sql_value(db_url, "SELECT queue_name FROM swf.channels "
                                             "WHERE channel = 'probe'")
    return name


def _allowed(url: str, statement: pgsql.Composable, params: Any = None) -> bool:
    """True unless the statement is refused for privileges (it is rolled back either way)."""
    with psycopg.connect(url) as conn:
        try:
            conn.execute(statement, params)
        except psycopg.errors.InsufficientPrivilege:
            return False
        except psycopg.Error:
            return True  # past the privilege check: NOT NULL, bad arguments, ...
        finally:
            conn.rollback()
    return True


def test_each_part_has_exactly_its_direct_privileges_on_every_table(
        db_url: str, parts: dict[str, str]) -> None:
    every = {row[0] for row in sql(db_url, "SELECT 'swf.' || tablename FROM pg_tables "
                                           "WHERE schemaname = 'swf'")}
    assert every - set(TABLES) == set(), "a table without an expected row in TABLES"
    wrong = []
    for name, expected in TABLES.items():
        table = _table(db_url, name)
        schema, relname = table.split(".")
        column = sql_value(db_url, "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                                   "AND attnum > 0 AND NOT attisdropped AND attidentity = '' "
                                   "AND attgenerated = '' ORDER BY attnum LIMIT 1", (table,))
        ident = pgsql.Identifier(schema, relname)
        statements = {
            S: pgsql.SQL("SELECT count(*) FROM {}").format(ident),
            I: pgsql.SQL("INSERT INTO {} DEFAULT VALUES").format(ident),
            U: pgsql.SQL("UPDATE {} SET {} = NULL WHERE false").format(
                ident, pgsql.Identifier(column)),
            D: pgsql.SQL("DELETE FROM {} WHERE false").format(ident),
        }
        for part, url in parts.items():
            may = {S, I, U, D} if part == "operator" else expected.get(part, set())
            for op, statement in statements.items():
                if _allowed(url, statement) != (op in may):
                    wrong.append(f"{part} {op} {name}: {'allowed' if op not in may else 'refused'}")
    assert wrong == [], wrong


def test_each_part_may_call_exactly_its_functions(db_url: str, parts: dict[str, str]) -> None:
    run_id = sql_value(db_url, "SELECT swf.start_run('probe_flow', %s, '{}')", (Jsonb([{
        "name": "a", "depends_on": [], "dependents": [], "execution": "local",
        "task_name": "t", "queue": None, "max_attempts": 1, "retry_delay_ms": 0,
        "timeout_ms": None, "resources": {}, "map_over": None}]),))
    definers = {row[0]: (row[1], row[2]) for row in sql(
        db_url, "SELECT p.proname, p.pronargs, p.prorettype = 'trigger'::regtype FROM pg_proc p "
                "WHERE p.pronamespace = 'swf'::regnamespace AND p.prosecdef")}
    triggers = {name for name, (_, is_trigger) in definers.items() if is_trigger}
    assert set(definers) - triggers == set(FUNCTIONS), "a SECURITY DEFINER function without " \
                                                       "an expected row in FUNCTIONS"
    wrong = []
    for name, may in FUNCTIONS.items():
        nargs = definers[name][0]
        args = ARGS.get(name, ", ".join(["NULL"] * nargs))
        template = args.replace("%(run)s", "{run}").replace("%(channel)s", "{channel}")
        statement = pgsql.SQL("SELECT * FROM swf.{}(" + template + ")").format(
            pgsql.Identifier(name), run=pgsql.Literal(str(run_id)), channel=pgsql.Literal(
                _table(db_url, "channel").removeprefix("pgmq.q_")))
        for part, url in parts.items():
            if _allowed(url, statement) != (part in may):
                wrong.append(f"{part} {name}: {'allowed' if part not in may else 'refused'}")
    assert wrong == [], wrong


def test_every_definer_function_pins_its_search_path_and_is_not_public(db_url: str) -> None:
    rows = sql(db_url, """
        SELECT p.oid::regprocedure::text, p.proconfig,
               p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a
                                           WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
          FROM pg_proc p
         WHERE p.pronamespace = 'swf'::regnamespace AND p.prosecdef
           AND p.prorettype <> 'trigger'::regtype""")
    assert len(rows) >= len(FUNCTIONS)
    for function, config, public in rows:
        assert config == ["search_path=pg_catalog, swf, pgmq, pg_temp"], function
        assert not public, f"{function} may be executed by PUBLIC"


def test_a_client_cannot_read_task_arguments_or_revoke_others_tasks(
        db_url: str, parts: dict[str, str]) -> None:
    client = parts["client"]
    assert not _allowed(client, pgsql.SQL("SELECT message FROM {}").format(
        pgsql.Identifier(*_table(db_url, "queue").split("."))))
    assert sql_value(client, "SELECT swf.task_revoke(ARRAY['t-1'])") == 0  # the owner's task
    assert sql_value(db_url, "SELECT swf.queue_size('jobs')") == 1
    assert sql_value(db_url, "SELECT count(*) FROM swf.revoked_tasks") == 0
    sql(client, "SELECT swf.queue_send('jobs', %s)", (Jsonb(kombu_message("mine")),))
    assert sql_value(client, "SELECT swf.task_revoke(ARRAY['mine'])") == 1
    assert sql(db_url, "SELECT task_id FROM swf.revoked_tasks") == [("mine",)]


def test_a_queue_a_client_made_first_is_the_workers_to_define(
        db_url: str, parts: dict[str, str]) -> None:
    client, worker = parts["client"], parts["worker"]
    # The client declares it as an expiring queue before any worker has.
    sql(client, "SELECT swf.queue_ensure('gpu_jobs', 5000)")
    sql(client, "SELECT swf.queue_send('gpu_jobs', %s)", (Jsonb(kombu_message("early")),))
    # The workers declare it durable: durable it is, with its message, and never reaped.
    assert sql(worker, "SELECT storage, expires_ms, declared_by FROM "
                       "swf.queue_ensure('gpu_jobs', 0)") == [("pgmq", None, None)]
    assert sql_value(db_url, "SELECT swf.queue_size('gpu_jobs')") == 1
    sql(db_url, "UPDATE swf.queues SET last_active = now() - interval '1 day'")
    sql(worker, "SELECT swf.queue_reap()")
    assert sql_value(db_url, "SELECT count(*) FROM swf.queues WHERE name = 'gpu_jobs'") == 1
    # A client's later declaration changes nothing.
    assert sql(client, "SELECT storage FROM swf.queue_ensure('gpu_jobs', 5000)") == [("pgmq",)]
    # A client that looked the storage up before the take-over still publishes into the queue.
    stale = QueueStorage("gpu_jobs", "t" + sql_value(
        db_url, "SELECT pgmq_name FROM swf.queues WHERE name = 'gpu_jobs'")[1:], "transient")
    sql(client, stale.statement("send"), {"message": Jsonb(kombu_message("late")), "delay": 0,
                                          "commit": "on", "queue": "gpu_jobs"})
    assert sql_value(db_url, "SELECT swf.queue_size('gpu_jobs')") == 2
    assert sql_value(db_url, "SELECT count(*) FROM swf.transient_messages") == 0


def test_a_client_sends_listens_and_acknowledges_messages(
        db_url: str, parts: dict[str, str]) -> None:
    client, worker = parts["client"], parts["worker"]
    listener = swf.listen("orders", client)
    try:
        sent = swf.send_with_notify("orders", {"n": 1}, worker)  # a channel made by a worker
        note = listener.get(timeout=10)
        assert note is not None and note.message_id == sent
        message = swf.get_message("orders", sent, client)
        assert message is not None and message.body == {"n": 1}
        mine = swf.send_with_notify("orders", {"n": 2}, client)
        assert [m.id for m in swf.read_pending("orders", client)] == [sent, mine]
        assert swf.acknowledge("orders", [sent, mine], client) == [sent, mine]
        assert swf.read_pending("orders", client) == []
    finally:
        swf.unlisten(listener)
    # The client made no table and wrote no catalog row of its own.
    assert not _allowed(client, pgsql.SQL("INSERT INTO swf.channels (channel, queue_name) "
                                          "VALUES ('x', 'y')"))


def test_cleanup_is_an_operators(parts: dict[str, str]) -> None:
    from swf_celery.errors import DatabasePermissionError
    from swf_celery.ops.retention import cleanup

    with pytest.raises(DatabasePermissionError, match="needs operator"):
        cleanup(parts["worker"])
    assert cleanup(parts["operator"]).total >= 0


def test_a_worker_runs_the_backends_chord_expiry(parts: dict[str, str]) -> None:
    # celery.backend_cleanup runs in a worker: swf.expire_chords runs as its caller.
    assert _allowed(parts["worker"], pgsql.SQL("SELECT swf.expire_chords(10)"))
    assert not _allowed(parts["client"], pgsql.SQL("SELECT swf.expire_chords(10)"))
