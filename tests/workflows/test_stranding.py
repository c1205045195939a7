"""No run is stranded: `celery worker` subprocesses whose app imports only ``swf_celery``
and plain Celery tasks (:mod:`tests.workflows.plain_app`), the seed's workflow form.

Two workers (queues ``plain_cpu`` and ``plain_gpu``) serve the module; every test looks
only at its own run. Runs are started with ``Executor.start`` and watched through
``get_run_status`` where nobody should have to wait on them for them to end.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import swf_celery as swf
from swf_celery import db as swf_db
from swf_celery.errors import WorkflowFailed
from swf_celery.ops.canvas import revoke_tasks
from swf_celery.workflows.executor import Executor
from tests.helpers import kill_worker, read_log, sql, wait_until, worker_process
from tests.workflows import plain_app, plain_flows

pytestmark = [pytest.mark.db, pytest.mark.slow]

APP = "tests.workflows.plain_app"


@pytest.fixture(scope="module")
def workers(module_db_url: str) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    env = {"SWF_DATABASE_URL": module_db_url}
    with worker_process(APP, queues=["plain_cpu"], hostname="cpu@%h", concurrency=3,
                        env={**env, "WORKER_ROLE": "cpu"}) as cpu, \
            worker_process(APP, queues=["plain_gpu"], hostname="gpu@%h",
                           env={**env, "WORKER_ROLE": "gpu"}) as gpu:
        yield {"cpu": cpu, "gpu": gpu}
        kill_worker(cpu)
        kill_worker(gpu)


@pytest.fixture
def db(module_db_url: str, workers: dict[str, Any]) -> Iterator[str]:
    yield module_db_url
    for name, proc in workers.items():
        assert proc.poll() is None, f"{name} worker died:\n{read_log(proc)[-3000:]}"


def _status(db: str, run_id: str) -> str:
    return swf.get_run_status(run_id, db).status


def _ended(db: str, run_id: str) -> str | None:
    status = _status(db, run_id)
    return status if status not in ("in_progress", "paused") else None


def _log_lines(path: Path) -> list[tuple[str, float, int]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        *words, at, pid = line.split()
        rows.append((" ".join(words), float(at), int(pid)))
    return rows


# -- 1. the step runner is registered by `import swf_celery` ------------------------------


def test_plain_worker_app_registers_the_step_runner(db: str, workers: dict[str, Any]) -> None:
    assert "swf_celery.workflows" not in open(plain_app.__file__).read()
    assert "Received unregistered task" not in read_log(workers["cpu"])


def test_seed_class_diamond_across_two_queues(db: str, workers: dict[str, Any]) -> None:
    result = Executor.execute(plain_flows.SeedDiamond, {"n": 3}, db, timeout=60_000)
    assert result.output == {"join": 10}
    status = swf.get_run_status(result.run_id, db)
    assert {s.name: s.queue for s in status.steps} == {
        "fetch": "plain_cpu", "left": "plain_cpu", "right": "plain_gpu", "join": "plain_gpu"}
    for proc in workers.values():
        assert "unregistered task" not in read_log(proc)


def test_thousand_step_dag_on_a_plain_worker_app(db: str) -> None:
    flow = plain_flows.layered("plain_thousand", 1000)
    result = Executor.execute(flow, {}, db, timeout=300_000)
    assert sorted(result.output) == [f"s{i}" for i in range(990, 1000)]
    assert swf.get_run_status(result.run_id, db).completed_steps == 1000


# -- 2. every outcome is reported -----------------------------------------------------------


def test_output_with_nul_fails_the_attempt_saying_so(db: str) -> None:
    flow = plain_flows.single("plain_nul", plain_app.nul_output, max_attempts=1)
    run_id = Executor.start(flow, {}, db)
    assert wait_until(lambda: _ended(db, run_id), 60, "run ended") == "failed"
    status = swf.get_run_status(run_id, db)
    assert status.failed_step == "only"
    assert "NUL character" in (status.error or "") and "\\u0000" in (status.error or "")


def test_dead_lettered_step_message_fails_its_attempt(module_db_url: str,
                                                      workers: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """A step whose pool process dies is delivered again; past max_deliveries the message
    is dead-lettered, and that fails the attempt instead of leaving it started."""
    log = tmp_path / "die.log"
    flow = plain_flows.single("plain_die", plain_app.die, queue="plain_dying", max_attempts=1)
    with worker_process(APP, queues=["plain_dying"], hostname="dying@%h",
                        env={"SWF_DATABASE_URL": module_db_url,
                             "SWF_TEST_MAX_DELIVERIES": "1"}) as proc:
        run_id = Executor.start(flow, {"log": str(log)}, module_db_url)
        assert wait_until(lambda: _ended(module_db_url, run_id), 90, "run ended",
                          proc=proc) == "failed"
    status = swf.get_run_status(run_id, module_db_url)
    assert "dead-lettered" in (status.error or "") and "delivered more than 1" in status.error
    dead = sql(module_db_url, "SELECT count(*) FROM swf.queue_dead_letters('plain_dying')")
    assert dead[0][0] == 1


# -- 3. timeouts are swept on a clock ---------------------------------------------------


def test_attempt_past_its_timeout_is_swept_without_anyone_waiting(
        db: str, workers: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    flow = plain_flows.single("plain_stubborn", plain_app.stubborn, timeout=1, max_attempts=1)
    run_id = Executor.start(flow, {"log": str(log)}, db)  # nobody calls Executor.wait
    assert wait_until(lambda: _ended(db, run_id), 60, "run ended by the sweeper") == "failed"
    status = swf.get_run_status(run_id, db)
    assert "timed out after 1 s" in (status.error or "")
    assert not status.overdue
    assert sql(db, "SELECT status FROM swf.step_tasks WHERE run_id = %s",
               (run_id,)) == [("failed",)]
    # The step ignores its soft limit: the sweep revoked it (terminate) before its hard
    # limit (11 s), which frees its worker slot.
    task_id = sql(db, "SELECT task_id::text FROM swf.step_tasks WHERE run_id = %s",
                  (run_id,))[0][0]
    wait_until(lambda: f"Terminating {task_id}" in read_log(workers["cpu"]), 10, "revoked",
               proc=workers["cpu"])


# -- 4. retry never runs a step twice at once -------------------------------------------


def test_failed_run_terminates_running_steps_and_retry_does_not_overlap(
        db: str, tmp_path: Path) -> None:
    log, counter = tmp_path / "slow.log", tmp_path / "boom"
    flow = plain_flows.pair("plain_overlap", (plain_app.slow, {"max_attempts": 1}),
                            (plain_app.boom_once, {"max_attempts": 1}))
    run_input = {"log": str(log), "counter": str(counter), "sleep": 6, "boom_after": 1.5}
    with pytest.raises(WorkflowFailed) as failed:
        Executor.execute(flow, run_input, db, timeout=60_000)
    run_id = failed.value.run_id
    wait_until(lambda: _log_lines(log), 30, "slow step started")
    # The failure revoked the running step with terminate: its attempt ended, not started.
    wait_until(lambda: sql(db, "SELECT status FROM swf.step_tasks WHERE run_id = %s AND "
                               "step_name = 'a'", (run_id,)) == [("cancelled",)],
               30, "running step's attempt ended")
    new_id = swf.retry_failed_workflow(run_id, db)
    assert wait_until(lambda: _ended(db, new_id), 60, "retry ended") == "completed"
    rows = _log_lines(log)
    starts = [at for word, at, _ in rows if word == "start"]
    ends = [at for word, at, _ in rows if word == "end"]
    assert len(starts) == 2 and len(ends) == 1, rows  # the first was terminated
    assert ends[0] > starts[1]
    assert not any(starts[0] < at < starts[1] for at in ends)  # never two at once


def test_revoked_step_task_is_reported_not_stranded(db: str, tmp_path: Path) -> None:
    """A user's `celery control revoke --terminate` of a running step ends its attempt:
    the step is retried as any failed attempt is."""
    log = tmp_path / "slow.log"
    flow = plain_flows.single("plain_revoked", plain_app.slow, max_attempts=2,
                              retry_delay=0)
    run_id = Executor.start(flow, {"log": str(log), "sleep": 3}, db)
    wait_until(lambda: _log_lines(log), 30, "step started")
    task_id = sql(db, "SELECT task_id::text FROM swf.step_tasks WHERE run_id = %s",
                  (run_id,))[0][0]
    revoke_tasks(swf_db.resolve(db), [task_id], terminate=True)
    assert wait_until(lambda: _ended(db, run_id), 60, "run ended") == "completed"
    steps = swf.get_run_status(run_id, db).steps
    assert steps[0].attempts == 2 and "revoked" in (steps[0].error or "")


# -- 6. the seed's maximum execution time -------------------------------------------------


def test_execute_timeout_cancels_the_run_unless_kept(db: str, tmp_path: Path) -> None:
    flow = plain_flows.single("plain_max_time", plain_app.slow, queue="plain_gpu",
                              max_attempts=1)
    with pytest.raises(swf.WorkflowTimeout, match="keeps running") as kept:
        Executor.execute(flow, {"log": str(tmp_path / "b"), "sleep": 1}, db, timeout=200,
                         on_timeout="keep")
    assert Executor.wait(kept.value.run_id, db, timeout=60_000).output == {"only": "slept"}
    with pytest.raises(swf.WorkflowTimeout, match="cancelled") as caught:
        Executor.execute(flow, {"log": str(tmp_path / "a"), "sleep": 3}, db, timeout=500)
    assert _status(db, caught.value.run_id) == "cancelled"
    assert swf.get_run_status(caught.value.run_id, db).error == "timed out after 500 ms"
