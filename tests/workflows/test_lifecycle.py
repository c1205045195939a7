"""Run lifecycle: status, list, pause, resume, cancel, retry, and the races between them.

Races are driven through the coordinator's calls directly (a step's completion report
racing a lifecycle call on two threads), so each outcome is checked, not timed.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import swf_celery as swf
from swf_celery.db import resolve
from swf_celery.errors import RunNotFound, RunStateError, SwfError, WorkflowFailed
from swf_celery.workflows import coordinator, lifecycle
from swf_celery.workflows.executor import Executor
from tests.helpers import queue_size, sql, wait_until
from tests.workflows.sample_flows import Diamond
from tests.workflows.sample_flows import chain as _chain

pytestmark = pytest.mark.usefixtures("join_run_drivers")


def _race(a: Callable[[], Any], b: Callable[[], Any]) -> tuple[Any, Any]:
    """Run two calls at the same moment on two threads; return both results."""
    barrier = threading.Barrier(2)
    out: list[Any] = [None, None]

    def go(i: int, fn: Callable[[], Any]) -> None:
        barrier.wait()
        out[i] = fn()

    threads = [threading.Thread(target=go, args=(i, fn)) for i, fn in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out[0], out[1]


def _tasks(url: str, run_id: str) -> dict[str, tuple[str, int]]:
    rows = sql(url, "SELECT step_name, status, attempt FROM swf.step_tasks WHERE run_id = %s",
               (run_id,))
    return {name: (status, attempt) for name, status, attempt in rows}


# -- status and listing ------------------------------------------------------------------


def test_get_run_status_of_a_completed_run(db_url: str) -> None:
    result = Executor.execute(Diamond, {"n": 1}, db_url)
    status = swf.get_run_status(result.run_id, db_url)
    assert (status.status, status.total_steps, status.completed_steps, status.percentage) == (
        "completed", 4, 4, 100.0)
    assert [s.name for s in status.steps] == ["fetch", "left", "right", "join"]
    assert all(s.status == "completed" and s.attempts == 1 for s in status.steps)
    assert status.output == result.output
    assert status.to_dict()["steps"][0]["name"] == "fetch"
    with pytest.raises(RunNotFound):
        swf.get_run_status("00000000-0000-0000-0000-000000000000", db_url)
    with pytest.raises(RunNotFound, match="not a run id"):
        swf.get_run_status("nope", db_url)


def test_list_workflow_runs_filters_and_validation(db_url: str) -> None:
    done = [Executor.execute(Diamond, {"n": i}, db_url).run_id for i in range(3)]
    db = resolve(db_url)
    held = coordinator.start_run(db, _chain("a", "b"), {})  # stays in progress
    runs = swf.list_workflow_runs(db_url)
    assert [r.run_id for r in runs] == [held] + done[::-1]
    assert [r.run_id for r in swf.list_workflow_runs(db_url, status="completed",
                                                     order_by=("asc", "inserted_at"))] == done
    assert [r.run_id for r in swf.list_workflow_runs(db_url, status="started")] == [held]
    assert [r.run_id for r in swf.list_workflow_runs(db_url, workflow_slug="tests.chain")] \
        == [held]
    assert len(swf.list_workflow_runs(db_url, limit=2, offset=1)) == 2
    assert swf.list_workflow_runs(db_url, status="completed")[0].percentage == 100.0
    with pytest.raises(SwfError, match="unknown run status 'running'"):
        swf.list_workflow_runs(db_url, status="running")
    with pytest.raises(SwfError, match="cannot order runs by 'input; drop'"):
        swf.list_workflow_runs(db_url, order_by=("desc", "input; drop"))
    with pytest.raises(SwfError, match="direction"):
        swf.list_workflow_runs(db_url, order_by=("sideways", "inserted_at"))


# -- pause and resume --------------------------------------------------------------------


def test_pause_holds_queued_messages_and_resume_sends_them_again(db_url: str) -> None:
    db = resolve(db_url)
    run_id = coordinator.start_run(db, _chain("a", "b", queue="held_q"), {})
    assert queue_size(db_url, "held_q") == 1
    with psycopg.connect(db_url) as conn:
        old_id = conn.execute("SELECT task_id FROM swf.step_tasks").fetchone()[0]
    swf.pause_workflow_run(run_id, db_url)
    swf.pause_workflow_run(run_id, db_url)  # pausing a paused run does nothing
    assert queue_size(db_url, "held_q") == 0
    assert _tasks(db_url, run_id) == {"a": ("paused", 1)}
    assert coordinator.start_task(db, str(old_id)) is None  # a copy a worker held: refused
    assert swf.get_run_status(run_id, db_url).status == "paused"

    swf.resume_workflow_run(run_id, db_url)
    assert queue_size(db_url, "held_q") == 1
    with psycopg.connect(db_url) as conn:
        new_id = conn.execute("SELECT task_id FROM swf.step_tasks").fetchone()[0]
    assert new_id != old_id  # the stale copy matches nothing
    assert coordinator.complete_task(db, str(old_id), 1) == "ignored"


def test_pause_while_a_step_completes(db_url: str) -> None:
    """Either order: the output is kept and the dependent waits until resume."""
    db = resolve(db_url)
    for _ in range(10):
        run_id = coordinator.start_run(db, _chain("a", "b"), {})
        [(task_id, _task)] = coordinator.claim_local_tasks(db, run_id, 5)
        done, _ = _race(lambda t=task_id: coordinator.complete_task(db, t, "A"),
                        lambda r=run_id: swf.pause_workflow_run(r, db_url))
        assert done == "completed"
        status = swf.get_run_status(run_id, db_url)
        assert status.status == "paused"
        states = {s.name: s.status for s in status.steps}
        assert states["a"] == "completed"
        # completion first: b was dispatched, then held; pause first: b became ready
        assert (states["b"], _tasks(db_url, run_id).get("b")) in (
            ("ready", None), ("started", ("paused", 1)))
        assert coordinator.claim_local_tasks(db, run_id, 5) == []  # nothing starts
        swf.resume_workflow_run(run_id, db_url)
        [(b_id, b_task)] = coordinator.claim_local_tasks(db, run_id, 5)
        assert b_task["input"]["a"] == "A"
        coordinator.complete_task(db, b_id, "B")
        assert swf.get_run_status(run_id, db_url).status == "completed"


def test_two_resumes_at_once_dispatch_once(db_url: str) -> None:
    db = resolve(db_url)
    for i in range(5):
        queue = f"resume_q{i}"
        run_id = coordinator.start_run(db, _chain("a", "b", queue=queue), {})
        swf.pause_workflow_run(run_id, db_url)
        _race(lambda r=run_id: swf.resume_workflow_run(r, db_url),
              lambda r=run_id: swf.resume_workflow_run(r, db_url))
        assert queue_size(db_url, queue) == 1
        assert _tasks(db_url, run_id) == {"a": ("queued", 1)}


def test_pause_and_resume_a_running_local_flow(db_url: str) -> None:
    release = threading.Event()
    started = threading.Event()

    class Gate:
        @swf.step()
        def first(inputs: dict[str, Any]) -> str:
            started.set()
            release.wait(10)
            return "first"

        @swf.step(depends_on=["first"])
        def second(inputs: dict[str, Any]) -> str:
            return inputs["first"] + "+second"

    run_id = Executor.start(Gate, {}, db_url)
    assert started.wait(10)
    swf.pause_workflow_run(run_id, db_url)
    release.set()
    # The running step finishes while paused; its dependent waits.
    status = _wait_for(db_url, run_id, lambda s: s.steps[0].status == "completed")
    assert status.status == "paused" and status.steps[1].status == "ready"
    swf.resume_workflow_run(run_id, db_url)
    assert Executor.wait(run_id, db_url, timeout=10_000).output == {"second": "first+second"}


def _wait_for(url: str, run_id: str, check: Callable[[Any], bool]) -> Any:
    """Wait (on workflow events) until ``check(status)`` holds."""
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute('LISTEN "swf_workflow_events"')
        for _ in range(100):
            status = swf.get_run_status(run_id, url)
            if check(status):
                return status
            for _note in listener.notifies(timeout=0.2, stop_after=1):
                pass
    raise AssertionError(f"run {run_id} never reached the expected state")


# -- cancel ------------------------------------------------------------------------------


def test_cancel_removes_queued_messages_and_refuses_finished_runs(db_url: str) -> None:
    db = resolve(db_url)
    run_id = coordinator.start_run(db, _chain("a", "b", queue="cancel_q"), {})
    assert queue_size(db_url, "cancel_q") == 1
    swf.cancel_workflow_run(run_id, db_url, reason="no longer needed")
    assert queue_size(db_url, "cancel_q") == 0
    status = swf.get_run_status(run_id, db_url)
    assert (status.status, status.error) == ("cancelled", "no longer needed")
    assert {s.status for s in status.steps} == {"cancelled"}
    with pytest.raises(RunStateError, match="already cancelled"):
        swf.cancel_workflow_run(run_id, db_url)

    done = Executor.execute(Diamond, {"n": 1}, db_url).run_id
    with pytest.raises(RunStateError, match="force=True"):
        swf.cancel_workflow_run(done, db_url)
    swf.cancel_workflow_run(done, db_url, force=True)
    status = swf.get_run_status(done, db_url)
    assert (status.status, status.error) == ("cancelled", lifecycle.DEFAULT_CANCEL_REASON)


def test_cancel_while_a_step_completes(db_url: str) -> None:
    """Completion first: output kept, dependent cancelled. Cancel first: report ignored."""
    db = resolve(db_url)
    seen = Counter()
    for _ in range(10):
        run_id = coordinator.start_run(db, _chain("a", "b"), {})
        [(task_id, _task)] = coordinator.claim_local_tasks(db, run_id, 5)
        done, _ = _race(lambda t=task_id: coordinator.complete_task(db, t, "A"),
                        lambda r=run_id: swf.cancel_workflow_run(r, db_url))
        status = swf.get_run_status(run_id, db_url)
        states = {s.name: s.status for s in status.steps}
        assert status.status == "cancelled"
        assert states["b"] == "cancelled"
        assert coordinator.claim_local_tasks(db, run_id, 5) == []
        if done == "completed":
            assert states["a"] == "completed"
            assert _tasks(db_url, run_id)["b"] == ("cancelled", 1)
        else:
            assert done == "ignored" and states["a"] == "cancelled"
            assert "b" not in _tasks(db_url, run_id)
        seen[done] += 1
    assert sum(seen.values()) == 10


# -- retry -------------------------------------------------------------------------------


def test_retry_reuses_completed_steps_and_map_items(db_url: str) -> None:
    calls: Counter[str] = Counter()
    broken = {"item": 7, "step": True}

    class Job:
        @swf.step()
        def source(inputs: dict[str, Any]) -> list[int]:
            calls["source"] += 1
            return list(range(10))

        @swf.step(map_over="source", max_attempts=1)
        def each(inputs: dict[str, Any]) -> int:
            calls[f"each{inputs['item']}"] += 1
            if inputs["item"] == broken["item"]:
                raise RuntimeError("item broken")
            return inputs["item"] * 10

        @swf.step(depends_on=["each"], max_attempts=1)
        def total(inputs: dict[str, Any]) -> int:
            calls["total"] += 1
            return sum(inputs["each"])

    with pytest.raises(WorkflowFailed, match="item 7: RuntimeError: item broken") as info:
        Executor.execute(Job, {}, db_url)
    failed = info.value.run_id
    assert info.value.step == "each"
    broken["item"] = -1
    # Items already running when the run failed finish on their own (local steps run in
    # this process's threads): the items done are counted once none is running.
    wait_until(lambda: not sql(db_url, "SELECT 1 FROM swf.step_tasks WHERE run_id = %s "
                                       "AND status = 'started'", (failed,)),
               10, "the items running at the failure ended")
    before = calls.copy()
    with psycopg.connect(db_url) as conn:
        finished = {i for (i,) in conn.execute(
            "SELECT task_index FROM swf.step_tasks WHERE run_id = %s AND step_name = 'each' "
            "AND status = 'completed'", (failed,))}
    assert 7 not in finished and len(finished) >= 1

    new_id, again = _race(lambda: swf.retry_failed_workflow(failed, db_url, workflow=Job),
                          lambda: swf.retry_failed_workflow(failed, db_url, workflow=Job))
    assert new_id == again  # one retry per run
    assert Executor.wait(new_id, db_url, timeout=10_000).output == {"total": 450}
    rerun = calls - before
    # Reused: the source step and every item that completed in the failed run (items
    # queued behind the failure were cancelled with the run: never run, so they run now).
    expected = Counter({f"each{i}": 1 for i in range(10) if i not in finished})
    assert rerun == expected + Counter({"total": 1})
    assert "each7" in rerun and "source" not in rerun
    status = swf.get_run_status(new_id, db_url)
    assert status.retry_of == failed
    assert swf.get_run_status(failed, db_url).retried_by == new_id
    assert [s.completed_tasks for s in status.steps] == [1, 10, 1]

    with pytest.raises(RunStateError, match="only a failed or cancelled run"):
        swf.retry_failed_workflow(new_id, db_url)


def test_retry_with_reset_all_reruns_everything(db_url: str) -> None:
    calls: Counter[str] = Counter()
    fail = {"on": True}

    class Two:
        @swf.step()
        def one(inputs: dict[str, Any]) -> int:
            calls["one"] += 1
            return 1

        @swf.step(depends_on=["one"], max_attempts=1)
        def two(inputs: dict[str, Any]) -> int:
            calls["two"] += 1
            if fail["on"]:
                raise ValueError("first time")
            return inputs["one"] + 1

    with pytest.raises(WorkflowFailed) as info:
        Executor.execute(Two, {}, db_url)
    fail["on"] = False
    new_id = swf.retry_failed_workflow(info.value.run_id, db_url, reset_all=True, workflow=Two)
    assert Executor.wait(new_id, db_url, timeout=10_000).output == {"two": 2}
    assert calls == Counter({"one": 2, "two": 2})


def test_lifecycle_errors_on_unknown_runs(db_url: str) -> None:
    unknown = "00000000-0000-0000-0000-000000000001"
    for call in (swf.pause_workflow_run, swf.resume_workflow_run, swf.cancel_workflow_run,
                 swf.retry_failed_workflow):
        with pytest.raises(RunNotFound, match=unknown):
            call(unknown, db_url)
    done = Executor.execute(Diamond, {"n": 1}, db_url).run_id
    with pytest.raises(RunStateError, match="only a run in progress can be paused"):
        swf.pause_workflow_run(done, db_url)
    with pytest.raises(RunStateError, match="only a paused run can be resumed"):
        swf.resume_workflow_run(done, db_url)
