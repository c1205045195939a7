"""The reference's forms, in Python, as its API summary writes them (docs/workflows.md,
"The reference's forms").

Each test reads like the reference's example it checks: the ``__workflow_steps__`` class
whose steps return ``{:ok, value}``, ``listen("workflow_events")`` and fetching the message
by its id, ``{:ok, status, details} = get_run_status`` with its three statuses,
``{:ok, step} = add_step``, retry from any process, a dead caller's run, goal timeouts.
The workflows live in tests/workflows/reference_app.py, a user's module that other
processes import by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

import swf_celery as swf
from swf_celery.errors import RunStateError, WorkflowFailed, WorkflowTimeout
from tests.helpers import ROOT, run_cli, wait_until
from tests.workflows import reference_app
from tests.workflows.reference_app import (
    Distributed,
    FlakyLocal,
    LambdaLocal,
    MyWorkflow,
    Refusing,
)

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("join_run_drivers")]


@pytest.fixture
def flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where steps count their attempts (shared with the processes a test starts)."""
    monkeypatch.setenv("REF_FLAG_DIR", str(tmp_path))
    return tmp_path


def _env(db_url: str, flags: Path) -> dict[str, str]:
    return dict(os.environ, SWF_DATABASE_URL=db_url, REF_FLAG_DIR=str(flags),
                PYTHONPATH=str(ROOT))


# -- Executor.execute with __workflow_steps__; steps return {:ok, value} ----------------

def test_execute_a_workflow_steps_class_whose_steps_return_ok_tuples(db_url: str) -> None:
    result = swf.Executor.execute(MyWorkflow, {"user_id": 123}, db_url)
    # {:ok, result, run_id}: the values inside ("ok", value) are the outputs, not the tuples
    assert result.output == {"save": {"saved": True, "what": "USER 123"}}
    status = swf.get_run_status(result.run_id, db_url)
    assert {s.name: s.status for s in status.steps} == {
        "fetch": "completed", "process": "completed", "save": "completed"}


def test_a_step_returning_error_fails_its_attempt_with_the_reason(db_url: str,
                                                                  flags: Path) -> None:
    result = swf.Executor.execute(Refusing, {"flag": "refusing"}, db_url)
    assert result.output == {"check": "now"}  # retried like a raise, then ("ok", "now")
    step = swf.get_run_status(result.run_id, db_url).steps[0]
    assert step.attempts == 2 and step.error == "not yet"


@pytest.fixture
def reference_worker(db_url: str) -> Iterator[Any]:
    """An in-process worker of the reference app on the test's database."""
    reference_app.app.conf.broker_url = swf_broker(db_url)
    with start_worker(reference_app.app, concurrency=2, pool="threads",
                      perform_ping_check=False, loglevel="WARNING", shutdown_timeout=20,
                      queues=["reference"]) as worker:
        yield worker


def swf_broker(db_url: str) -> str:
    return "swf://" + db_url.split("://", 1)[1]


def test_distributed_steps_follow_the_same_return_rule(db_url: str,
                                                       reference_worker: Any) -> None:
    result = swf.Executor.execute(Distributed, {"text": "to be or not"}, db_url,
                                  timeout=60_000)
    assert result.output == {"check": 1}
    assert swf.get_run_status(result.run_id, db_url).steps[0].status == "completed"
    with pytest.raises(WorkflowFailed) as failed:
        swf.Executor.execute(Distributed, {"text": ""}, db_url, timeout=60_000)
    assert failed.value.step == "check" and failed.value.cause == "the text is empty"


# -- listen("workflow_events"): a notification with a message id, fetched by id -------

def test_listen_to_workflow_events_and_fetch_each_message_by_id(db_url: str) -> None:
    listener = swf.listen("workflow_events", db_url)
    try:
        result = swf.Executor.execute(MyWorkflow, {"user_id": 7}, db_url)
        seen = []
        while True:
            note = listener.get(timeout=10)  # {:notification, pid, channel, message_id}
            assert note is not None and note.channel == "workflow_events"
            message = swf.get_message("workflow_events", note.message_id, db_url)
            seen.append(message.body)
            if message.body == {"run_id": result.run_id, "step": None,
                                "status": "completed"}:
                break
    finally:
        swf.unlisten(listener, db_url)
    assert {"run_id": result.run_id, "step": "save", "status": "completed"} in seen
    # ... and the history stays readable later, in order
    history = [m.body for m in swf.read_pending("workflow_events", db_url, limit=1000)
               if m.body.get("run_id") == result.run_id]
    assert history[0] == {"run_id": result.run_id, "step": None, "status": "in_progress"}
    assert history[-1]["status"] == "completed" and len(history) == 1 + 3 * 2 + 1


def test_applications_send_on_workflow_events_too_and_get_ids(db_url: str) -> None:
    with swf.listen("workflow_events", db_url) as listener:
        message_id = swf.send_with_notify(
            "workflow_events", {"type": "task_completed", "workflow_id": "wf_123",
                                "task_id": "task_456", "duration_ms": 1500}, db_url)
        note = listener.get(timeout=10)
    assert note is not None and note.message_id == message_id
    # the reference's string id form works wherever an id is taken
    assert swf.get_message("workflow_events", str(message_id), db_url).body["type"] \
        == "task_completed"
    assert swf.acknowledge("workflow_events", str(message_id), db_url) == [message_id]


# -- {:ok, :completed | :failed | :in_progress, details} = get_run_status ------------

def test_every_run_reads_as_one_of_the_three_statuses(db_url: str) -> None:
    result = swf.Executor.execute(MyWorkflow, {"user_id": 1}, db_url)
    status, details = swf.get_run_status(result.run_id, db_url)
    assert status == "completed"
    assert details == {"total_steps": 3, "completed_steps": 3, "percentage": 100.0}

    flow = swf.FlowBuilder.create_flow("held", db_url)
    swf.FlowBuilder.add_step(flow, "a", [], db_url)
    run_id = swf.Executor.start_dynamic(flow, {}, {"a": swf.step(queue="nowhere")(
        reference_app.analyze)}, db_url)
    swf.pause_workflow_run(run_id, db_url)
    paused = swf.get_run_status(run_id, db_url)
    assert (paused.status, paused.state) == ("paused", "in_progress")
    assert list(paused)[0] == "in_progress"
    swf.cancel_workflow_run(run_id, db_url, reason="Timeout exceeded")
    cancelled = swf.get_run_status(run_id, db_url)
    assert (cancelled.status, cancelled.state) == ("cancelled", "failed")
    # the list's filters speak the reference's words as well
    assert [r.run_id for r in swf.list_workflow_runs(db_url, status="failed")] == [run_id]
    assert {r.state for r in swf.list_workflow_runs(db_url)} == {"completed", "failed"}


# -- {:ok, step} = FlowBuilder.add_step -------------------------------------------------

def test_add_step_returns_the_step_it_added(db_url: str) -> None:
    workflow_id = swf.FlowBuilder.create_flow("ai_generated_workflow", db_url)
    step1 = swf.FlowBuilder.add_step(workflow_id, "step1", [], db_url)
    step2 = swf.FlowBuilder.add_step(workflow_id, "step2", ["step1"], db_url,
                                     max_attempts=5)
    assert step1["name"] == "step1" and step1["depends_on"] == []
    assert step2["depends_on"] == ["step1"] and step2["max_attempts"] == 5
    assert swf.FlowBuilder.get_flow(workflow_id, db_url)["steps"] == [step1, step2]


# -- retry from anywhere: local steps imported from where they live --------------------

def test_the_cli_retries_a_local_run_from_another_process(db_url: str, flags: Path) -> None:
    with pytest.raises(WorkflowFailed):
        swf.Executor.execute(FlakyLocal, {"flag": "flaky"}, db_url)
    failed = swf.list_workflow_runs(db_url, status="failed")[0].run_id
    out = run_cli("retry", failed, database=db_url, env=_env(db_url, flags), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    new_id = out.stdout.split()[1]
    assert out.stdout.strip() == f"run {new_id} completed"
    assert swf.get_run_status(new_id, db_url).output == {"flaky": 21}
    # the completed step was reused, not run again
    assert (flags / "flaky.prepare").read_text().count("x") == 1


def test_a_function_that_cannot_be_imported_is_refused_clearly(db_url: str,
                                                               flags: Path) -> None:
    with pytest.raises(WorkflowFailed):
        swf.Executor.execute(LambdaLocal, {}, db_url)
    failed = swf.list_workflow_runs(db_url, status="failed")[0].run_id
    out = run_cli("retry", failed, database=db_url, env=_env(db_url, flags), cwd=ROOT)
    assert out.returncode == 1
    assert "local step 'only'" in out.stderr and "lambda" in out.stderr
    assert len(swf.list_workflow_runs(db_url)) == 1  # no run was created


# -- a dead caller: the lease runs out, or another process takes the run over ----------

def _start_driver(db_url: str, flags: Path, flag: str, lease: float) -> tuple[Any, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.workflows.reference_app import "
         "start_and_hang; start_and_hang(sys.argv[1], sys.argv[2], float(sys.argv[3]))",
         db_url, flag, str(lease)],
        cwd=ROOT, env=_env(db_url, flags), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    wait_until(lambda: (flags / flag).exists(), 30, "the slow step to start")
    return proc, run_id


def test_a_run_whose_driver_died_fails_after_its_lease(db_url: str, flags: Path) -> None:
    proc, run_id = _start_driver(db_url, flags, "dies", lease=1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(WorkflowFailed, match="nobody drives its local steps"):
        swf.Executor.wait(run_id, db_url, timeout=30_000)
    status = swf.get_run_status(run_id, db_url)
    assert status.status == "failed" and "lease" in (status.error or "")
    # ... ready for retry, here, where the functions import
    new_id = swf.retry_failed_workflow(run_id, db_url)
    assert swf.Executor.wait(new_id, db_url, timeout=30_000).output["done"] \
        == f"done in {os.getpid()}"


def test_another_process_takes_over_a_run_with_resume(db_url: str, flags: Path) -> None:
    proc, run_id = _start_driver(db_url, flags, "taken", lease=30.0)
    try:
        with pytest.raises(RunStateError, match="driven by"):
            swf.Executor.resume(run_id, db_url, timeout=5_000)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies holding its lease
        proc.wait()
        result = swf.Executor.resume(run_id, db_url, timeout=30_000, take_over=True)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert result.output == {"done": f"done in {os.getpid()}"}
    slow = swf.get_run_status(run_id, db_url).steps[0]
    assert slow.attempts == 2  # the dead driver's attempt failed, retried here


# -- goals: timeouts as Executor.execute, each task told who it is ---------------------

def decompose(goal: str) -> list[dict[str, Any]]:
    """The reference's decomposer: any function from a goal to tasks."""
    return [{"id": "build", "description": f"Build for {goal!r}", "depends_on": []},
            {"id": "deploy", "description": "Deploy it", "depends_on": ["build"]}]


def test_a_goal_timeout_cancels_the_run_unless_kept(db_url: str) -> None:
    with pytest.raises(WorkflowTimeout, match="cancelled"):
        swf.Orchestrator.execute_goal("ship it", decompose,
                                      {"*": reference_app.sleepy_task}, db_url,
                                      input={"sleep": 1}, timeout=300)
    graph = swf.Orchestrator.list_task_graphs(db_url)[0]
    run = swf.get_run_status(graph["last_run_id"], db_url)
    assert run.status == "cancelled" and graph["status"] == "failed"
    with pytest.raises(WorkflowTimeout, match="keeps running"):
        swf.WorkflowComposer.compose_from_goal(
            "ship it", decompose,
            {"*": reference_app.sleepy_task}, db_url, input={"sleep": 0.5}, timeout=200,
            on_timeout="keep")
    kept = swf.Orchestrator.list_task_graphs(db_url)[0]
    assert swf.Executor.wait(kept["last_run_id"], db_url, timeout=30_000).output \
        == {"deploy": "slept"}


def test_one_star_function_tells_goal_tasks_apart(db_url: str) -> None:
    result = swf.Orchestrator.execute_goal("ship it", decompose,
                                           {"*": reference_app.describe_task}, db_url)
    assert result.output == {"deploy": {"id": "deploy", "description": "Deploy it"}}


def test_fast_runs_do_not_wait_for_leases(db_url: str) -> None:
    started = time.monotonic()
    swf.Executor.execute(MyWorkflow, {"user_id": 2}, db_url, lease=0.5)
    assert time.monotonic() - started < 10
