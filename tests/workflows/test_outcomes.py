"""The coordinator's answers to stranding, step by step on a real PostgreSQL (no workers:
the tests play the worker's part with the coordinator calls a worker makes).

Runs use the plain tasks of :mod:`tests.workflows.plain_app`; nothing consumes their
queues here.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import swf_celery as swf
from swf_celery import db as swf_db
from swf_celery.errors import StepFunctionError, WorkflowFailed
from swf_celery.workflows import coordinator, local_runner
from swf_celery.workflows.executor import Executor
from swf_celery.workflows.flows import FlowBuilder
from tests.helpers import commit_settings, probe_commits, read_queue, sql, sql_value
from tests.workflows import plain_app, plain_flows

pytestmark = pytest.mark.usefixtures("join_run_drivers")


def _tasks(url: str, run_id: str) -> dict[str, tuple[str, str, int]]:
    rows = sql(url, "SELECT step_name, task_id::text, status, attempt FROM swf.step_tasks "
                    "WHERE run_id = %s", (run_id,))
    return {step: (task_id, status, attempt) for step, task_id, status, attempt in rows}


# -- 4. a retry adopts the attempts still running ----------------------------------------


def test_retry_adopts_running_attempts_so_no_step_runs_twice(db_url: str) -> None:
    database = swf_db.resolve(db_url)
    flow = plain_flows.pair("adopt", (plain_app.slow, {"max_attempts": 1}),
                            (plain_app.boom_once, {"max_attempts": 1}))
    run_id = Executor.start(flow, {}, db_url)
    a_id, b_id = _tasks(db_url, run_id)["a"][0], _tasks(db_url, run_id)["b"][0]
    assert coordinator.start_task(database, a_id) is not None       # a runs on a worker
    assert coordinator.start_task(database, b_id) is not None
    assert coordinator.fail_task(database, b_id, "boom") == "failed"  # the run fails
    assert coordinator.running_tasks(database, run_id) == [a_id]

    new_id = swf.retry_failed_workflow(run_id, db_url)
    moved = _tasks(db_url, new_id)
    assert moved["a"] == (a_id, "started", 1)        # adopted: same attempt, not sent again
    assert moved["b"][0] != b_id and moved["b"][1] == "queued"
    assert "a" not in _tasks(db_url, run_id)
    # The running execution reports to the new run, whose step completes with it.
    assert coordinator.complete_task(database, a_id, "done") == "completed"
    assert coordinator.start_task(database, moved["b"][0]) is not None
    assert coordinator.complete_task(database, moved["b"][0], "fine") == "completed"
    status = swf.get_run_status(new_id, db_url)
    assert status.status == "completed" and status.output == {"a": "done", "b": "fine"}
    assert swf.get_run_status(run_id, db_url).status == "failed"


def test_retry_with_reset_all_cancels_running_attempts(db_url: str) -> None:
    database = swf_db.resolve(db_url)
    flow = plain_flows.pair("reset", (plain_app.slow, {"max_attempts": 1}),
                            (plain_app.boom_once, {"max_attempts": 1}))
    run_id = Executor.start(flow, {}, db_url)
    a_id, b_id = _tasks(db_url, run_id)["a"][0], _tasks(db_url, run_id)["b"][0]
    coordinator.start_task(database, a_id)
    coordinator.fail_task(database, b_id, "boom")
    new_id = swf.retry_failed_workflow(run_id, db_url, reset_all=True)
    assert _tasks(db_url, run_id)["a"][1] == "cancelled"  # and revoked (terminate)
    assert _tasks(db_url, new_id)["a"][0] != a_id
    # The old execution's late report changes nothing.
    assert coordinator.complete_task(database, a_id, "late") == "ignored"


def test_a_redelivered_message_of_a_failed_run_ends_its_attempt(db_url: str) -> None:
    database = swf_db.resolve(db_url)
    flow = plain_flows.pair("redeliver", (plain_app.slow, {"max_attempts": 1}),
                            (plain_app.boom_once, {"max_attempts": 1}))
    run_id = Executor.start(flow, {}, db_url)
    a_id, b_id = _tasks(db_url, run_id)["a"][0], _tasks(db_url, run_id)["b"][0]
    coordinator.start_task(database, a_id)
    coordinator.fail_task(database, b_id, "boom")
    # a's worker died; its message comes back: the attempt ends instead of staying started.
    assert coordinator.start_task(database, a_id) is None
    assert _tasks(db_url, run_id)["a"][1] == "cancelled"
    assert coordinator.running_tasks(database, run_id) == []


def test_a_revoked_attempt_is_retried_in_an_active_run(db_url: str) -> None:
    database = swf_db.resolve(db_url)
    run_id = Executor.start(plain_flows.single("revoked", plain_app.slow, max_attempts=2,
                                               retry_delay=0), {}, db_url)
    task_id = _tasks(db_url, run_id)["only"][0]
    coordinator.start_task(database, task_id)
    assert coordinator.abandon_task(database, task_id, "step task revoked") == "retrying"
    assert _tasks(db_url, run_id)["only"][1:] == ("queued", 2)
    assert coordinator.abandon_task(database, task_id, "again") == "ignored"


def test_a_dead_lettered_step_fails_its_attempt_in_a_synchronous_commit(db_url: str) -> None:
    run_id = Executor.start(plain_flows.single("buried", plain_app.slow, max_attempts=1), {},
                            db_url)
    task_id = _tasks(db_url, run_id)["only"][0]
    probe_commits(db_url, "swf.step_tasks", "swf.dead_letters")
    with psycopg.connect(db_url, autocommit=True) as broker:
        broker.execute("SET synchronous_commit = off")  # as the transport's session
        [(msg_id, receipt, message, _)] = read_queue(broker, "plain_cpu")
        assert message["headers"]["id"] == task_id
        assert broker.execute("SELECT swf.queue_reject('plain_cpu', %s, false, 'rejected', %s)",
                              ([msg_id], [receipt])).fetchone() == (1,)
    status = swf.get_run_status(run_id, db_url)
    assert status.status == "failed" and "dead-lettered" in (status.error or "")
    assert ("step_tasks", "UPDATE", "on") in commit_settings(db_url)
    assert {s for t, _, s in commit_settings(db_url)} == {"on"}


# -- 3. sweeping and reporting overdue attempts -------------------------------------------


def test_overdue_attempt_is_reported_and_swept_by_one_sweeper(db_url: str) -> None:
    database = swf_db.resolve(db_url)
    run_id = Executor.start(plain_flows.single("overdue", plain_app.slow, timeout=5,
                                               max_attempts=1), {}, db_url)
    task_id = _tasks(db_url, run_id)["only"][0]
    coordinator.start_task(database, task_id)
    status = swf.get_run_status(run_id, db_url)
    assert not status.overdue and status.steps[0].overdue_tasks == 0
    sql(db_url, "UPDATE swf.step_tasks SET deadline = now() - interval '1 s' "
                "WHERE task_id = %s", (task_id,))
    status = swf.get_run_status(run_id, db_url)
    assert status.status == "in_progress" and status.overdue
    assert status.steps[0].overdue_tasks == 1
    # A waiting caller leaves it to its worker (soft limit) and the sweep until the hard
    # limit has passed as well: only the sweep can stop (revoke) an execution still going.
    assert coordinator.expire_tasks(database, run_id) == 0
    assert coordinator.refresh_run(database, run_id)["wake_in_ms"] > 5000
    with psycopg.connect(db_url) as other:  # another worker is sweeping right now
        other.execute("SELECT pg_advisory_xact_lock(hashtext('swf-celery:sweep'), 0)")
        assert coordinator.sweep_timeouts(database) is None
    result = coordinator.sweep_timeouts(database)
    assert result == {"expired": 1, "revoke": [task_id]}
    status = swf.get_run_status(run_id, db_url)
    assert status.status == "failed" and status.error == "timed out after 5 s"
    assert not status.overdue


# -- 7. capped backoff ---------------------------------------------------------------------


def test_retry_backoff_is_capped_at_an_hour_however_many_attempts(db_url: str) -> None:
    database = swf_db.resolve(db_url)
    run_id = Executor.start(plain_flows.single("backoff", plain_app.slow, max_attempts=100,
                                               retry_delay=1), {}, db_url)
    task_id = _tasks(db_url, run_id)["only"][0]
    sql(db_url, "UPDATE swf.step_tasks SET attempt = 40 WHERE task_id = %s", (task_id,))
    assert coordinator.fail_task(database, task_id, "again") == "retrying"
    delay = sql_value(db_url, "SELECT extract(epoch FROM available_at - now()) "
                              "FROM swf.step_tasks WHERE run_id = %s", (run_id,))
    assert 3590 < float(delay) <= 3600


# -- 2. outputs that cannot be stored -----------------------------------------------------


@pytest.mark.parametrize(("output", "reason"), [
    ({"text": "a\x00b"}, "NUL character"),
    (float("nan"), "not JSON-serialisable"),
    ({"s": "\ud800"}, "cannot be stored"),  # a lone surrogate: jsonb refuses it
])
def test_output_that_cannot_be_stored_fails_the_attempt(db_url: str, output: Any,
                                                        reason: str) -> None:
    database = swf_db.resolve(db_url)
    run_id = Executor.start(plain_flows.single("unstorable", plain_app.slow, max_attempts=1),
                            {}, db_url)
    task_id = _tasks(db_url, run_id)["only"][0]
    coordinator.start_task(database, task_id)
    assert coordinator.complete_task(database, task_id, output) == "failed"
    assert reason in (swf.get_run_status(run_id, db_url).error or "")


def test_local_step_output_with_nul_fails_the_run_saying_so(db_url: str) -> None:
    class Nul:
        @swf.step()
        def only(inputs: dict[str, Any]) -> str:
            return "a\x00b"

    with pytest.raises(WorkflowFailed, match="NUL character"):
        Executor.execute(Nul, {}, db_url, timeout=30_000)


# -- 5. retry of local steps in every kind of flow -----------------------------------------


def _flaky_once(calls: list[int]) -> Any:
    def fn(inputs: dict[str, Any]) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first call fails")
        return "ok"
    return fn


def test_retry_of_a_class_flow_with_local_steps_needs_no_workflow_argument(db_url: str
                                                                          ) -> None:
    calls: list[int] = []

    class Seed:
        __workflow_slug__ = "seed_local_retry"

        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return [("work", _flaky_once(calls), {"max_attempts": 1})]

    with pytest.raises(WorkflowFailed) as failed:
        Executor.execute(Seed, {}, db_url, timeout=30_000)
    new_id = swf.retry_failed_workflow(failed.value.run_id, db_url)
    assert Executor.wait(new_id, db_url, timeout=30_000).output == {"work": "ok"}


def test_retry_of_dynamic_flow_finds_or_is_given_its_functions(db_url: str) -> None:
    FlowBuilder.create_flow("dyn_retry", db_url)
    FlowBuilder.add_step("dyn_retry", "work", [], db_url, max_attempts=1)
    calls: list[int] = []
    with pytest.raises(WorkflowFailed) as failed:
        Executor.execute_dynamic("dyn_retry", {}, {"work": _flaky_once(calls)}, db_url,
                                 timeout=30_000)
    run_id = failed.value.run_id
    # Another process knows no functions: a clear error, and no retry run is made.
    local_runner._known.clear()
    with pytest.raises(StepFunctionError,
                       match=r"local step 'work'.*cannot be imported.*step_functions"):
        swf.retry_failed_workflow(run_id, db_url)
    assert swf.get_run_status(run_id, db_url).retried_by is None
    new_id = swf.retry_failed_workflow(run_id, db_url, step_functions={"work": lambda _: "re"})
    assert Executor.wait(new_id, db_url, timeout=30_000).output == {"work": "re"}


def test_retry_of_goal_flow_in_the_same_process(db_url: str) -> None:
    broken = [True]

    def build(inputs: dict[str, Any]) -> str:
        if broken[0]:
            raise RuntimeError("toolchain missing")
        return "built"

    with pytest.raises(WorkflowFailed) as failed:
        swf.Orchestrator.execute_goal("ship", lambda goal: [{"id": "build"}],
                                      {"build": build}, db_url, timeout=30_000)
    broken[0] = False
    new_id = swf.retry_failed_workflow(failed.value.run_id, db_url)
    assert Executor.wait(new_id, db_url, timeout=30_000).output == {"build": "built"}


# -- 6. the seed's list filter --------------------------------------------------------------


def test_failed_filter_includes_cancelled_runs_and_cancelled_narrows(db_url: str) -> None:
    run_id = Executor.start(plain_flows.single("listed", plain_app.slow), {}, db_url)
    swf.cancel_workflow_run(run_id, db_url)
    assert [r.run_id for r in swf.list_workflow_runs(db_url, status="failed")] == [run_id]
    assert [r.run_id for r in swf.list_workflow_runs(db_url, status="cancelled")] == [run_id]
    assert swf.list_workflow_runs(db_url, status="in_progress") == []
