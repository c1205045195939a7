"""Retention bounds every store: task graphs, dynamic flows, unacknowledged channel messages and
durable queues nobody uses. Each test fills a store, ages part of it, runs the cleanup an
operator runs, and checks that the bound holds and that nothing still in use went."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu import Connection
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

import swf_celery
from swf_celery.goals.decomposers import EXAMPLE_RULES, RuleDecomposer
from swf_celery.goals.orchestrator import Orchestrator
from swf_celery.ops.retention import RetentionPolicy, cleanup
from swf_celery.transport import visibility
from swf_celery.workflows.flows import FlowBuilder
from tests.helpers import kombu_message, read_queue, sql, sql_value, swf_url, wait_until

DAY = dt.timedelta(days=1)


def _ago(days: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - days * DAY


def _step(inputs: dict[str, Any]) -> str:
    return "done"


# -- task graphs and dynamic flows ---------------------------------------------------------


def _goal(url: str, goal: str) -> tuple[str, str]:
    """A goal run to completion: its task graph's id and its run's id."""
    result = Orchestrator.execute_goal(goal, RuleDecomposer(EXAMPLE_RULES), {"*": _step}, url,
                                       timeout=60_000)
    return result.graph_id, result.run_id


def _age_graph(url: str, graph_id: str, days: float) -> None:
    """The graph, its goal flow and its run as if all happened ``days`` ago."""
    sql(url, "UPDATE swf.task_graphs SET decomposed_at = %(t)s, updated_at = %(t)s "
             "WHERE id = %(g)s", {"t": _ago(days), "g": graph_id})
    sql(url, "UPDATE swf.runs SET inserted_at = %(t)s, finished_at = %(t)s "
             "WHERE id = (SELECT last_run_id FROM swf.task_graphs WHERE id = %(g)s)",
        {"t": _ago(days), "g": graph_id})
    _age_flow(url, f"goal-{graph_id}", days)


def _age_flow(url: str, slug: str, days: float) -> None:
    sql(url, "UPDATE swf.flows SET created_at = %(t)s, last_used_at = %(t)s WHERE slug = %(s)s",
        {"t": _ago(days), "s": slug})
    sql(url, "UPDATE swf.flow_steps SET created_at = %(t)s "
             "WHERE flow_id = (SELECT id FROM swf.flows WHERE slug = %(s)s)",
        {"t": _ago(days), "s": slug})


def _graphs(url: str) -> set[str]:
    return {str(r[0]) for r in sql(url, "SELECT id FROM swf.task_graphs")}


def _flows(url: str) -> set[str]:
    return {r[0] for r in sql(url, "SELECT slug FROM swf.flows")}


def test_task_graphs_go_30_days_after_their_last_change_unless_their_run_is_active(
        db_url: str) -> None:
    old, old_run = _goal(db_url, "Train a churn model")
    recent, _ = _goal(db_url, "Train a fraud model")
    _age_graph(db_url, old, 40)
    # An old preview nobody approved, and an old graph whose run is still going (paused).
    preview = Orchestrator.decompose_goal("Train a risk model", RuleDecomposer(EXAMPLE_RULES),
                                          db_url)["id"]
    running, _ = _goal(db_url, "Train a price model")
    sql(db_url, "UPDATE swf.runs SET status = 'paused', finished_at = NULL WHERE id = "
                "(SELECT last_run_id FROM swf.task_graphs WHERE id = %s)", (running,))
    sql(db_url, "UPDATE swf.task_graphs SET status = 'running', updated_at = %s "
                "WHERE id = ANY(%s::uuid[])", (_ago(40), [preview, running]))

    assert cleanup(db_url, dry_run=True).deleted["task_graphs"] == 2
    report = cleanup(db_url)

    assert report.deleted["task_graphs"] == 2
    assert _graphs(db_url) == {recent, running}
    # The old goal's run finished 40 days ago: it went (30 days), and its flow, which nothing
    # refers to any more and which was last used 40 days ago, stays until 90 days.
    assert sql_value(db_url, "SELECT count(*) FROM swf.runs WHERE id = %s", (old_run,)) == 0
    assert f"goal-{old}" in _flows(db_url)
    assert report.deleted["flows"] == 0


def test_dynamic_flows_go_when_nothing_refers_to_them_for_90_days(db_url: str) -> None:
    for slug in ("unused", "has_a_run", "named_by_a_graph", "step_added", "recent",
                 "last_run_long_ago", "last_run_recent"):
        FlowBuilder.create_flow(slug, db_url)
        FlowBuilder.add_step(slug, "a", [], db_url)
    for slug in ("unused", "has_a_run", "named_by_a_graph", "step_added", "last_run_long_ago",
                 "last_run_recent"):
        _age_flow(db_url, slug, 200)
    FlowBuilder.add_step("step_added", "b", ["a"], db_url)  # edited today
    # A run in progress refers to one flow; a task graph names another.
    sql(db_url, "INSERT INTO swf.runs (flow_id, flow_slug, total_steps, remaining_steps) "
                "SELECT id, slug, 1, 1 FROM swf.flows WHERE slug = 'has_a_run'")
    sql(db_url, "INSERT INTO swf.task_graphs (goal, tasks, flat_tasks, workflow_id, updated_at) "
                "VALUES ('g', '[]', '[]', 'named_by_a_graph', now())")
    # Finished runs that retention deletes (30 days): the flow remembers when they started.
    for slug, days in (("last_run_long_ago", 100), ("last_run_recent", 45)):
        sql(db_url, "INSERT INTO swf.runs (flow_id, flow_slug, status, total_steps, "
                    "remaining_steps, inserted_at, finished_at) SELECT id, slug, 'completed', "
                    "1, 0, %(t)s, %(t)s FROM swf.flows WHERE slug = %(s)s",
            {"t": _ago(days), "s": slug})
    # A code-defined workflow's catalogue entry stays, however old.
    sql(db_url, "INSERT INTO swf.flows (slug, dynamic, created_at, last_used_at) "
                "VALUES ('in_code', false, %(t)s, %(t)s)", {"t": _ago(400)})

    report = cleanup(db_url, RetentionPolicy(batch=1))

    assert report.deleted["runs"] == 2
    assert report.deleted["flows"] == 2
    assert _flows(db_url) == {"has_a_run", "named_by_a_graph", "step_added", "recent",
                              "last_run_recent", "in_code"}
    assert sql_value(db_url, "SELECT count(*) FROM swf.flow_steps s WHERE NOT EXISTS "
                             "(SELECT 1 FROM swf.flows f WHERE f.id = s.flow_id)") == 0
    assert sql_value(db_url, "SELECT last_used_at < now() - interval '44 days' FROM swf.flows "
                             "WHERE slug = 'last_run_recent'")
    # A flow kept runs again; a deleted one is gone for good (its name is free again).
    assert FlowBuilder.get_flow("step_added", db_url)["steps"][1]["name"] == "b"
    FlowBuilder.create_flow("unused", db_url)


# -- channels ------------------------------------------------------------------------------


def test_unacknowledged_channel_messages_go_30_days_after_they_were_sent(db_url: str) -> None:
    ids = [swf_celery.send_with_notify("orders", {"n": n}, db_url) for n in range(5)]
    swf_celery.acknowledge("orders", ids[4], db_url)  # archived: the 7-day rule's
    queue = sql_value(db_url, "SELECT queue_name FROM swf.channels WHERE channel = 'orders'")
    table = pgsql.Identifier("pgmq", f"q_{queue}")
    sql(db_url, pgsql.SQL("UPDATE {} SET enqueued_at = %(t)s, vt = %(t)s "
                          "WHERE msg_id = ANY(%(ids)s)").format(table),
        {"t": _ago(31), "ids": ids[:2]})
    sql(db_url, pgsql.SQL("UPDATE {} SET enqueued_at = %(t)s, vt = %(t)s "
                          "WHERE msg_id = %(id)s").format(table), {"t": _ago(29), "id": ids[2]})

    assert cleanup(db_url, dry_run=True).deleted["channel_pending"] == 2
    assert cleanup(db_url, RetentionPolicy(batch=1)).deleted["channel_pending"] == 2

    assert [m.id for m in swf_celery.read_pending("orders", db_url)] == ids[2:4]
    assert swf_celery.get_message("orders", ids[0], db_url) is None
    assert swf_celery.get_message("orders", ids[4], db_url).archived  # type: ignore[union-attr]
    # Kept forever when the setting says so.
    sql(db_url, pgsql.SQL("UPDATE {} SET enqueued_at = %(t)s, vt = %(t)s").format(table),
        {"t": _ago(400)})
    assert "channel_pending" not in cleanup(db_url, RetentionPolicy(channel_pending=None)).deleted
    assert len(swf_celery.read_pending("orders", db_url)) == 2


# -- durable queues ------------------------------------------------------------------------


def _queue(url: str, name: str, *, messages: int = 0) -> str:
    """A durable queue as a worker declares it, with ``messages`` waiting; its pgmq name."""
    sql(url, "SELECT swf.queue_ensure(%s, 0)", (name,))
    sql(url, "SELECT swf.queue_bind('ex', %s, NULL, %s)", (name, name))
    for i in range(messages):
        sql(url, "SELECT swf.queue_send(%s, %s)", (name, Jsonb(kombu_message(f"{name}-{i}"))))
    return str(sql_value(url, "SELECT pgmq_name FROM swf.queues WHERE name = %s", (name,)))


def _idle_since(url: str, days: float, *names: str) -> None:
    sql(url, "UPDATE swf.queues SET created_at = %(t)s, last_active = %(t)s "
             "WHERE name = ANY(%(n)s)", {"t": _ago(days), "n": list(names)})


def _queues(url: str) -> set[str]:
    return {r[0] for r in sql(url, "SELECT name FROM swf.queues")}


def test_durable_queues_nobody_uses_are_dropped_after_30_days(db_url: str) -> None:
    idle = [_queue(db_url, f"idle{i}") for i in range(3)]
    _queue(db_url, "waiting", messages=2)
    _queue(db_url, "held", messages=1)
    read_queue(db_url, "held", vt=3600)  # a consumer holds its one message
    _queue(db_url, "archived", messages=1)
    sql(db_url, "SELECT swf.queue_ack('archived', ARRAY[1]::bigint[], true)")
    _queue(db_url, "recent")
    _idle_since(db_url, 40, "idle0", "idle1", "idle2", "waiting", "held", "archived")
    _idle_since(db_url, 20, "recent")
    sql(db_url, "SELECT swf.queue_ensure('reply.celery.pidbox', 10000)")  # expiring: reaped
    _idle_since(db_url, 40, "reply.celery.pidbox")

    assert cleanup(db_url, dry_run=True).deleted["queues"] == 3
    report = cleanup(db_url, RetentionPolicy(batch=2))  # two statements for three queues

    assert report.deleted["queues"] == 3
    assert _queues(db_url) == {"waiting", "held", "archived", "recent", "reply.celery.pidbox"}
    for pgmq in idle:
        assert sql_value(db_url, "SELECT to_regclass(%s)", (f"pgmq.q_{pgmq}",)) is None
    assert sql_value(db_url, "SELECT count(*) FROM swf.queue_bindings WHERE queue LIKE 'idle%%'") \
        == 0
    assert sql_value(db_url, "SELECT swf.queue_size('waiting')") == 2
    # A queue declared again, or published to, after it was dropped is simply made again.
    sql(db_url, "SELECT swf.queue_send('idle0', %s)", (Jsonb(kombu_message("late")),))
    assert sql_value(db_url, "SELECT swf.queue_size('idle0')") == 1


def test_a_queue_is_never_unused_for_less_than_an_hour(db_url: str) -> None:
    _queue(db_url, "jobs")
    sql(db_url, "UPDATE swf.queues SET created_at = now() - interval '50 minutes', "
                "last_active = now() - interval '50 minutes'")
    assert "jobs" in _queues(db_url)
    assert cleanup(db_url, RetentionPolicy().older_than(dt.timedelta(minutes=1))
                   ).deleted["queues"] == 0
    sql(db_url, "UPDATE swf.queues SET created_at = now() - interval '70 minutes', "
                "last_active = now() - interval '70 minutes'")
    assert cleanup(db_url, RetentionPolicy().older_than(dt.timedelta(minutes=1))
                   ).deleted["queues"] == 1


def test_declaring_a_queue_counts_as_use(db_url: str) -> None:
    _queue(db_url, "jobs")
    _idle_since(db_url, 40, "jobs")
    with Connection(swf_url(db_url)) as conn:
        conn.SimpleQueue("jobs").close()  # a consumer starting up declares its queue
    assert cleanup(db_url).deleted["queues"] == 0
    assert "jobs" in _queues(db_url)


@pytest.fixture
def quick_marks() -> Iterator[None]:
    """Consumers mark their queues every 0.2 s instead of every minute (this process)."""
    before = visibility.MARK_EVERY
    visibility.MARK_EVERY = 0.2
    yield
    visibility.MARK_EVERY = before


def test_a_queue_a_worker_consumes_is_never_dropped(db_url: str, quick_marks: None,
                                                    tmp_path: Path) -> None:
    app = Celery("consumer", broker=swf_url(db_url), set_as_current=False)
    app.conf.update(task_default_queue="consumed", worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True, swf_retention=False)
    started, release = tmp_path / "started", tmp_path / "release"

    @app.task(name="block", shared=False)
    def block() -> None:
        started.touch()
        while not release.exists():
            time.sleep(0.05)

    _queue(db_url, "unconsumed")
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                      shutdown_timeout=10):
        # The worker's one thread runs a long task (its queue is empty, nothing is read or
        # armed) while weeks pass: its keeper marks the queue as in use, again and again.
        block.delay()
        wait_until(started.exists, what="the long task")
        for _ in range(2):
            _idle_since(db_url, 40, "consumed", "unconsumed")
            wait_until(lambda: sql_value(db_url, "SELECT last_active > now() - interval "
                                                 "'1 hour' FROM swf.queues "
                                                 "WHERE name = 'consumed'"),
                       what="the worker's mark on its queue")
        _idle_since(db_url, 40, "unconsumed")
        assert sql_value(db_url, "SELECT swf.queue_size('consumed')") == 0
        report = cleanup(db_url)
        assert report.deleted["queues"] == 1
        assert "consumed" in _queues(db_url) and "unconsumed" not in _queues(db_url)
        release.touch()


def test_a_queue_locked_by_a_publisher_right_now_is_skipped(db_url: str) -> None:
    import psycopg

    _queue(db_url, "jobs")
    _idle_since(db_url, 40, "jobs")
    pgmq = sql_value(db_url, "SELECT pgmq_name FROM swf.queues WHERE name = 'jobs'")
    with psycopg.connect(db_url) as publisher:  # a publish not committed yet
        publisher.execute(pgsql.SQL("INSERT INTO {} (vt, message) VALUES (now(), '{{}}')")
                          .format(pgsql.Identifier("pgmq", f"q_{pgmq}")))
        assert cleanup(db_url).deleted["queues"] == 0
        publisher.rollback()
    assert cleanup(db_url).deleted["queues"] == 1


def test_queue_and_flow_retention_settings() -> None:
    policy = RetentionPolicy.from_conf({"swf_retention_queues": "14d",
                                        "swf_retention_flows": None,
                                        "swf_retention_task_graphs": "60d",
                                        "swf_retention_channel_pending": 0})
    assert policy.queues == 14 * DAY and policy.flows is None
    assert policy.task_graphs == 60 * DAY and policy.channel_pending is None
    defaults = RetentionPolicy()
    assert (defaults.task_graphs, defaults.flows, defaults.channel_pending, defaults.queues) == (
        30 * DAY, 90 * DAY, 30 * DAY, 30 * DAY)
    week = RetentionPolicy().older_than(7 * DAY)
    assert {week.queues, week.flows, week.task_graphs, week.channel_pending} == {7 * DAY}
