"""Conditional steps (run_if / skip_if, skip cascades, run_on_skip, on_exhausted="skip"),
signals (wait_for + swf.signal) and durable sleep (wait_until), from the user's side: the
flows are in tests/workflows/conditional_app.py, which imports only celery and swf_celery.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

import swf_celery as swf
from swf_celery.errors import (
    RunNotFound,
    RunStateError,
    UnknownSignal,
    WorkflowDefinitionError,
)
from tests.helpers import ROOT, wait_until, worker_process
from tests.workflows import conditional_app
from tests.workflows.conditional_app import (
    Approval,
    Branching,
    LocalApproval,
    OnWorkers,
    Optional,
    sleeper,
)

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("join_run_drivers")]


def _steps(run_id: str, url: str) -> dict[str, str]:
    return {s.name: s.status for s in swf.get_run_status(run_id, url).steps}


# -- conditions ----------------------------------------------------------------------------

def test_exactly_one_branch_runs_and_skips_cascade(db_url: str) -> None:
    big = swf.Executor.execute(Branching, {"size": 50}, db_url)
    assert big.output == {"audit": "audited split into parts",
                          "report": {"big": "split into parts", "small": None}}
    assert _steps(big.run_id, db_url)["small"] == "skipped"

    small = swf.Executor.execute(Branching, {"size": 3}, db_url)
    # big skipped (run_if False): audit, which needs it, is skipped too; report runs on
    # partial inputs
    assert small.output == {"audit": None, "report": {"big": None, "small": "kept whole"}}
    steps = swf.get_run_status(small.run_id, db_url).steps
    by_name = {s.name: s for s in steps}
    assert by_name["big"].status == "skipped" and by_name["big"].error == "run_if was False"
    assert by_name["audit"].status == "skipped"
    assert "big was skipped" in (by_name["audit"].error or "")
    status, details = swf.get_run_status(small.run_id, db_url)
    assert status == "completed" and details["percentage"] == 100.0


def test_skips_are_events_on_workflow_events(db_url: str) -> None:
    result = swf.Executor.execute(Branching, {"size": 3}, db_url)
    events = [m.body for m in swf.read_pending("workflow_events", db_url, limit=1000)
              if m.body.get("run_id") == result.run_id]
    assert {"run_id": result.run_id, "step": "big", "status": "skipped"} in events
    assert {"run_id": result.run_id, "step": "audit", "status": "skipped"} in events


def test_a_step_that_used_up_its_attempts_is_skipped_when_asked(db_url: str) -> None:
    result = swf.Executor.execute(Optional, {"n": 4}, db_url)
    assert result.output == {"use": {"enrichment": None, "base": 4}}
    enrich = swf.get_run_status(result.run_id, db_url).steps[0]
    assert enrich.status == "skipped" and enrich.attempts == 2
    assert "the optional enrichment is down" in (enrich.error or "")


def test_predicates_are_checked_with_the_definition() -> None:
    with pytest.raises(WorkflowDefinitionError, match="not both"):
        swf.step(run_if=bool, skip_if=bool)
    with pytest.raises(WorkflowDefinitionError, match="on_exhausted"):
        swf.step(on_exhausted="ignore")
    with pytest.raises(WorkflowDefinitionError, match="map step"):
        swf.step(map_over="run", run_if=bool)

    class Unreachable:  # a lambda predicate for a task given outside @step
        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return [("draft", conditional_app.draft,
                     {"depends_on": [], "run_if": lambda inputs: True})]

    with pytest.raises(WorkflowDefinitionError, match="runs on the worker"):
        swf.Executor.start(Unreachable, {}, "postgresql://unused")


@pytest.fixture
def worker(db_url: str) -> Iterator[Any]:
    """An in-process worker of the conditional app on the test's database."""
    conditional_app.app.conf.broker_url = "swf://" + db_url.split("://", 1)[1]
    with start_worker(conditional_app.app, concurrency=2, pool="threads",
                      perform_ping_check=False, loglevel="WARNING", shutdown_timeout=20,
                      queues=["conditional"]) as w:
        yield w


def test_a_distributed_steps_predicate_runs_on_its_worker(db_url: str, worker: Any) -> None:
    ran = swf.Executor.execute(OnWorkers, {"go": True, "word": "hey"}, db_url, timeout=60_000)
    assert ran.output == {"shout": "HEY"}
    skipped = swf.Executor.execute(OnWorkers, {"go": False, "word": "hey"}, db_url,
                                   timeout=60_000)
    assert skipped.output == {"shout": None}
    assert _steps(skipped.run_id, db_url) == {"shout": "skipped"}


# -- signals -------------------------------------------------------------------------------

def test_a_step_waits_for_its_signal_and_gets_the_payload(db_url: str) -> None:
    run_id = swf.Executor.start(LocalApproval, {"title": "Q3"}, db_url)
    wait_until(lambda: _steps(run_id, db_url)["publish"] == "waiting", 30,
               "publish to wait for its signal")
    time.sleep(0.3)
    assert _steps(run_id, db_url)["publish"] == "waiting"  # nothing runs it before the signal
    assert swf.signal(run_id, "approved", {"by": "ana"}, db_url) == 1
    assert swf.Executor.wait(run_id, db_url, timeout=30_000).output == {
        "publish": {"published": "draft of Q3", "approved_by": "ana"}}


def test_a_signal_sent_early_is_kept_and_bad_ones_are_refused(db_url: str) -> None:
    swf.pause_workflow_run(run_id := swf.Executor.start(LocalApproval, {"title": "Q4"},
                                                          db_url), db_url)
    assert swf.signal(run_id, "approved", {"by": "bo"}, db_url) == 0  # kept for later
    with pytest.raises(UnknownSignal, match="no step waiting for the signal 'aproved'"):
        swf.signal(run_id, "aproved", {}, db_url)
    with pytest.raises(RunNotFound):
        swf.signal("00000000-0000-0000-0000-000000000000", "approved", {}, db_url)
    swf.resume_workflow_run(run_id, db_url)
    assert swf.Executor.wait(run_id, db_url, timeout=30_000).output["publish"][
        "approved_by"] == "bo"


def test_cancel_applies_while_a_step_waits(db_url: str) -> None:
    run_id = swf.Executor.start(LocalApproval, {"title": "Q1"}, db_url)
    wait_until(lambda: _steps(run_id, db_url)["publish"] == "waiting", 30, "the wait")
    swf.cancel_workflow_run(run_id, db_url)
    assert _steps(run_id, db_url)["publish"] == "cancelled"
    with pytest.raises(RunStateError, match="takes no more signals"):
        swf.signal(run_id, "approved", {"by": "late"}, db_url)


@pytest.mark.slow
@pytest.mark.long
def test_a_wait_holds_no_worker_and_survives_worker_restarts(db_url: str) -> None:
    """No worker runs while the step waits; the signal is sent with none running, and the
    step runs on a worker started afterwards."""
    env = dict(os.environ, SWF_DATABASE_URL=db_url, PYTHONPATH=str(ROOT))
    with worker_process("tests.workflows.conditional_app", queues=["conditional"], env=env):
        run_id = swf.Executor.start(Approval, {"title": "launch"}, db_url)
        wait_until(lambda: _steps(run_id, db_url)["publish"] == "waiting", 60, "the wait")
    swf.signal(run_id, "approved", {"by": "cy"}, db_url)  # no worker is running now
    with worker_process("tests.workflows.conditional_app", queues=["conditional"], env=env):
        result = swf.Executor.wait(run_id, db_url, timeout=60_000)
    assert result.output == {"publish": {"published": "draft of launch", "approved_by": "cy"}}


# -- durable sleep -------------------------------------------------------------------------

def test_wait_until_delays_a_local_step(db_url: str) -> None:
    result = swf.Executor.execute(sleeper(1.0), {}, db_url)
    first = dt.datetime.fromisoformat(result.output["later"])
    status = swf.get_run_status(result.run_id, db_url)
    began = dt.datetime.fromisoformat(status.steps[0].completed_at)
    assert (first - began).total_seconds() >= 0.95


def test_wait_until_delays_a_distributed_step_with_no_worker_busy(db_url: str,
                                                                    worker: Any) -> None:
    run_id = swf.Executor.start(sleeper(1.0, distributed=True), {}, db_url)
    wait_until(lambda: _steps(run_id, db_url)["later"] == "waiting", 30, "the sleep")
    result = swf.Executor.wait(run_id, db_url, timeout=30_000)
    steps = swf.get_run_status(run_id, db_url).steps
    slept = (dt.datetime.fromisoformat(result.output["later"])
             - dt.datetime.fromisoformat(steps[0].completed_at)).total_seconds()
    assert slept >= 0.95


def test_wait_until_takes_an_aware_datetime_only() -> None:
    with pytest.raises(WorkflowDefinitionError, match="timezone-aware"):
        swf.step(wait_until=dt.datetime(2030, 1, 1))
    swf.step(wait_until=dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))


def test_a_goal_run_waits_for_its_approval_signal(db_url: str) -> None:
    import threading

    def tasks(goal: str) -> list[dict[str, Any]]:
        return [{"id": "plan", "description": "Plan", "depends_on": []},
                {"id": "do", "description": "Do it", "depends_on": ["plan"]}]

    graph = swf.Orchestrator.decompose_goal("ship", tasks, db_url)
    outcome: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: outcome.update(result=swf.Orchestrator.execute_goal(
        graph["id"], None, {"*": conditional_app.stamp}, db_url, require_approval="wait",
        timeout=60_000)))
    runner.start()

    def waiting() -> bool:
        run_id = swf.Orchestrator.get_task_graph(graph["id"], db_url)["last_run_id"]
        return run_id is not None and _steps(str(run_id), db_url)["plan"] == "waiting"

    wait_until(waiting, 30, "the goal's first task to wait for approval")
    swf.Orchestrator.approve_task_graph(graph["id"], db_url)
    runner.join(30)
    assert set(outcome["result"].output) == {"do"}
