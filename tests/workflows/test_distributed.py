"""Distributed steps on real `celery worker -Q ...` subprocesses over the swf:// broker.

One database and two workers (cpu_workers, gpu_workers) serve the whole module, so the
workers start once; every test looks only at its own run.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import swf_celery as swf
from swf_celery import db as swf_db
from swf_celery.errors import WorkflowFailed
from swf_celery.workflows.executor import Executor
from tests.helpers import (
    kill_worker,
    queue_size,
    read_log,
    read_queue,
    sql,
    sql_value,
    wait_until,
    worker_process,
)
from tests.workflows import engine_app

pytestmark = [pytest.mark.db, pytest.mark.slow]


@pytest.fixture(scope="module")
def shared_db(module_db_url: str) -> str:
    return module_db_url


@pytest.fixture(scope="module")
def workers(shared_db: str) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    env = {"SWF_DATABASE_URL": shared_db}
    with worker_process("tests.workflows.engine_app", queues=["cpu_workers"], hostname="cpu@%h",
                        env={**env, "WORKER_ROLE": "cpu"}) as cpu, \
            worker_process("tests.workflows.engine_app", queues=["gpu_workers"], hostname="gpu@%h",
                           env={**env, "WORKER_ROLE": "gpu"}) as gpu:
        yield {"cpu": cpu, "gpu": gpu}
        # The database is dropped next: a graceful shutdown would only cost time.
        kill_worker(cpu)
        kill_worker(gpu)


@pytest.fixture
def db(shared_db: str, workers: dict[str, Any]) -> Iterator[str]:
    yield shared_db
    for name, proc in workers.items():
        assert proc.poll() is None, f"{name} worker died:\n{read_log(proc)[-3000:]}"


def _states(url: str, run_id: str) -> dict[str, tuple[str, Any]]:
    rows = sql(url, "SELECT step_name, status, output FROM swf.step_states WHERE run_id = %s",
               (run_id,))
    return {name: (status, output) for name, status, output in rows}


def test_diamond_across_cpu_and_gpu_workers(db: str) -> None:
    result = Executor.execute(engine_app.DiamondFlow, {"n": 3}, db, timeout=60_000)
    assert result.output == {"join": {"n": 10, "roles": {"left": "cpu", "right": "gpu",
                                                         "join": "gpu"}}}
    states = _states(db, result.run_id)
    assert states["fetch"] == ("completed", {"n": 3, "role": "cpu"})
    with psycopg.connect(db) as conn:
        resources = conn.execute("SELECT resources, queue FROM swf.step_states WHERE "
                                 "run_id = %s AND step_name = 'right'",
                                 (result.run_id,)).fetchone()
    assert resources == ({"gpu": True}, "gpu_workers")  # routed by the resource map


def test_shared_task_steps_in_both_decorator_orders(db: str) -> None:
    result = Executor.execute(engine_app.SharedFlow, {"n": 5}, db, timeout=60_000)
    assert result.output == {"shared_inc": 11}


def test_thousand_step_layered_dag_on_workers(db: str) -> None:
    from benchmarks.bench_workflow import layered_workflow

    flow = layered_workflow(engine_app.noop, queue="gpu_workers")
    result = Executor.execute(flow, {}, db, timeout=120_000)
    assert len(result.output) == 50
    assert set(result.output.values()) == {3}  # run input + two dependencies
    with psycopg.connect(db) as conn:
        done = conn.execute("SELECT count(*) FROM swf.step_states WHERE run_id = %s AND "
                            "status = 'completed'", (result.run_id,)).fetchone()[0]
    assert done == 1000


def _single(task: Any, **options: Any) -> type:
    class Single:
        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return [("only", task, {"depends_on": [], **options})]

    return Single


def test_fails_twice_then_succeeds_with_backoff(db: str, tmp_path: Path) -> None:
    counter = str(tmp_path / "flaky")
    flow = _single(engine_app.flaky, queue="cpu_workers", max_attempts=3, retry_delay=0.5)
    result = Executor.execute(flow, {"counter": counter}, db, timeout=60_000)
    assert result.output == {"only": "ok after 3"}
    with psycopg.connect(db) as conn:
        attempt, error, queued, available = conn.execute(
            "SELECT attempt, error, queued_at, available_at FROM swf.step_tasks "
            "WHERE run_id = %s", (result.run_id,)).fetchone()
    assert attempt == 3
    assert error == "RuntimeError: attempt 2 fails"
    # The third attempt was delayed by retry_delay * 2 = 1 s in the broker, not in a worker.
    assert (available - queued).total_seconds() >= 1.0


def test_exhausted_attempts_fail_the_run(db: str, tmp_path: Path) -> None:
    flow = _single(engine_app.flaky, queue="cpu_workers", max_attempts=2, retry_delay=0)
    with pytest.raises(WorkflowFailed) as info:
        Executor.execute(flow, {"counter": str(tmp_path / "c")}, db, timeout=60_000)
    assert info.value.step == "only"
    assert info.value.cause == "RuntimeError: attempt 2 fails"


def test_step_over_its_timeout_fails_that_attempt(db: str, tmp_path: Path) -> None:
    flow = _single(engine_app.sleepy, queue="cpu_workers", timeout=1, max_attempts=2,
                   retry_delay=0)
    result = Executor.execute(flow, {"counter": str(tmp_path / "s"), "sleep": 20}, db,
                              timeout=60_000)
    assert result.output == {"only": "attempt 2"}
    with psycopg.connect(db) as conn:
        error = conn.execute("SELECT error FROM swf.step_tasks WHERE run_id = %s",
                             (result.run_id,)).fetchone()[0]
    assert error == "timed out after 1 s"


def test_map_over_100_items(db: str) -> None:
    class Mapped:
        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return [("items", engine_app.items, {"queue": "cpu_workers"}),
                    ("square", engine_app.square, {"map_over": "items",
                                                   "queue": "gpu_workers"})]

    result = Executor.execute(Mapped, {"count": 100}, db, timeout=60_000)
    assert result.output == {"square": [i * i for i in range(100)]}
    with psycopg.connect(db) as conn:
        tasks = conn.execute("SELECT count(*) FROM swf.step_tasks WHERE run_id = %s AND "
                             "step_name = 'square'", (result.run_id,)).fetchone()[0]
    assert tasks == 100


def test_mixed_local_and_distributed(db: str) -> None:
    seen: list[Any] = []

    def local_report(inputs: dict[str, Any]) -> str:
        seen.append(inputs["remote"])
        return f"remote said {inputs['remote']['n']}"

    def prepare(inputs: dict[str, Any]) -> int:
        return inputs["run"]["n"] + 1

    class Mixed:
        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return [
                ("prepare", prepare, {}),
                ("remote", engine_app.fetch, {"depends_on": ["prepare"]}),
                ("report", local_report, {"depends_on": ["remote"]}),
            ]

    result = Executor.execute(Mixed, {"n": 7}, db, timeout=60_000)
    assert result.output == {"report": "remote said 7"}
    assert seen == [{"n": 7, "role": "cpu"}]
    states = _states(db, result.run_id)
    assert states["prepare"] == ("completed", 8)


def test_duplicate_delivery_completes_once(db: str, tmp_path: Path) -> None:
    """The same step message delivered twice runs the step once, dispatches dependents once."""
    counter = str(tmp_path / "dup")

    class Dup:
        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return [("record", engine_app.record, {"queue": "dup_queue"}),
                    ("after", engine_app.noop, {"depends_on": ["record"],
                                                "queue": "gpu_workers"})]

    run_id = Executor.start(Dup, {"counter": counter}, db)
    with psycopg.connect(db, autocommit=True) as conn:
        # No worker consumes dup_queue yet: take its message and put it back twice, as a
        # redelivery would.
        message = read_queue(conn, "dup_queue", qty=10, no_ack=True)[0][2]
        conn.execute("SELECT swf.queue_send('dup_queue', %s::jsonb), "
                     "swf.queue_send('dup_queue', %s::jsonb)",
                     (psycopg.types.json.Jsonb(message), psycopg.types.json.Jsonb(message)))
    env = {"SWF_DATABASE_URL": db, "WORKER_ROLE": "dup"}
    with worker_process("tests.workflows.engine_app", queues=["dup_queue"], env=env, concurrency=1,
                        hostname="dup@%h") as dup_worker:
        result = Executor.wait(run_id, db, timeout=60_000)
        remaining = queue_size(db, "dup_queue")
        kill_worker(dup_worker)
        assert remaining == 0
    assert result.output == {"after": 2}
    assert Path(counter).read_text().count("x") == 1  # the step function ran once
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT step_name, attempt, status FROM swf.step_tasks "
                            "WHERE run_id = %s ORDER BY step_name", (run_id,)).fetchall()
    assert rows == [("after", 1, "completed"), ("record", 1, "completed")]


def test_unregistered_distributed_step_is_refused(db: str) -> None:
    from celery import Celery

    other = Celery("other", set_as_current=False)

    class NotATask:
        def __call__(self, inputs: Any) -> None:
            return None

    fake = NotATask()
    fake.name = "other.fake"  # type: ignore[attr-defined]
    fake.app = other  # type: ignore[attr-defined]
    fake.apply_async = None  # type: ignore[attr-defined]
    with pytest.raises(swf.WorkflowDefinitionError, match="not registered"):
        Executor.execute(_single(fake, execution="distributed"), {}, db)


def test_cancel_revokes_a_running_step(db: str, tmp_path: Path,
                                       workers: dict[str, Any]) -> None:
    flow = _single(engine_app.sleepy, queue="cpu_workers", max_attempts=1)
    run_id = Executor.start(flow, {"counter": str(tmp_path / "c"), "sleep": 60}, db)
    # The step task is marked started by the worker.
    wait_until(lambda: sql_value(db, "SELECT status FROM swf.step_tasks WHERE run_id = %s",
                                 (run_id,)) == "started", timeout=10, what="step started",
               proc=workers["cpu"])
    task_id = sql_value(db, "SELECT task_id::text FROM swf.step_tasks WHERE run_id = %s",
                        (run_id,))
    swf.cancel_workflow_run(run_id, db, reason="stop it", terminate=False)
    with pytest.raises(WorkflowFailed, match="cancelled: stop it"):
        Executor.wait(run_id, db, timeout=10_000)
    # The worker got the revoke broadcast; with terminate=False the running step is not
    # killed: it finishes and the coordinator ignores its late report.
    wait_until(lambda: f"Tasks flagged as revoked: {task_id}" in read_log(workers["cpu"]),
               timeout=10, what="revoke received", proc=workers["cpu"])
    log = read_log(workers["cpu"])
    assert f"Tasks flagged as revoked: {task_id}" in log
    assert f"Terminating {task_id}" not in log


def test_cancel_terminates_a_running_step_by_default(db: str, tmp_path: Path,
                                                    workers: dict[str, Any]) -> None:
    flow = _single(engine_app.sleepy, queue="cpu_workers", max_attempts=1)
    run_id = Executor.start(flow, {"counter": str(tmp_path / "c"), "sleep": 600}, db)
    wait_until(lambda: sql_value(db, "SELECT status FROM swf.step_tasks WHERE run_id = %s",
                                 (run_id,)) == "started", timeout=10, what="step started",
               proc=workers["cpu"])
    task_id = sql_value(db, "SELECT task_id::text FROM swf.step_tasks WHERE run_id = %s",
                        (run_id,))
    swf.cancel_workflow_run(run_id, db, reason="stop it")
    wait_until(lambda: f"Terminating {task_id}" in read_log(workers["cpu"]),
               timeout=10, what="running step terminated", proc=workers["cpu"])
    # The worker goes on serving: a new run completes.
    result = Executor.execute(_single(engine_app.sleepy, queue="cpu_workers"),
                              {"counter": str(tmp_path / "d"), "sleep": 0}, db,
                              timeout=30_000)
    assert result.output == {"only": "attempt 1"}


def test_cancel_canvas_removes_queued_and_revokes_held(db: str, tmp_path: Path,
                                                       workers: dict[str, Any]) -> None:
    from celery import Celery, chain

    client = Celery("canvas-client", broker=swf_db.broker_url(db),
                    set_as_current=False)
    marker = tmp_path / "after"

    def sig(name: str, *args: Any, queue: str) -> Any:
        return client.signature(f"tests.workflows.engine_app.{name}", args=args, immutable=True,
                                queue=queue)

    running = chain(sig("nap", 30, queue="cpu_workers"),
                    sig("touch", str(marker), queue="cpu_workers")).apply_async()
    queued = chain(sig("touch", str(marker), queue="canvas_hold_q"),
                   sig("touch", str(marker), queue="canvas_hold_q")).apply_async()
    root, queued_root = running.parent.id, queued.parent.id
    wait_until(lambda: f"tests.workflows.engine_app.nap[{root}] received"
               in read_log(workers["cpu"]), timeout=10,
               what="the worker holds the chain's first message", proc=workers["cpu"])

    done = swf.cancel_canvas(root, db, app=client)
    assert done.revoked == [root] and done.removed == 0
    wait_until(lambda: f"Terminating {root}" in read_log(workers["cpu"])
               or f"Discarding revoked task: tests.workflows.engine_app.nap[{root}]"
               in read_log(workers["cpu"]), timeout=10, what=f"{root} revoked",
               proc=workers["cpu"])

    assert swf.cancel_canvas(queued_root, db).removed == 1
    assert queue_size(db, "canvas_hold_q") == 0
    assert not marker.exists()  # neither chain went on


def test_worker_killed_mid_step_runs_it_again_and_completes_once(db: str,
                                                                   tmp_path: Path) -> None:
    """At-least-once: the step may run twice, it completes once, dependents dispatch once."""
    counter = str(tmp_path / "crash")

    class Crash:
        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return [("slow", engine_app.sleepy, {"queue": "crash_q"}),
                    ("after", engine_app.noop, {"depends_on": ["slow"],
                                                "queue": "gpu_workers"})]

    env = {"SWF_DATABASE_URL": db, "WORKER_ROLE": "crash", "SWF_TEST_VT": "2"}
    run_id = Executor.start(Crash, {"counter": counter, "sleep": 30}, db)
    with worker_process("tests.workflows.engine_app", queues=["crash_q"], env=env, concurrency=1,
                        hostname="crash1@%h") as first:
        wait_until(Path(counter).exists, timeout=10, what="the first attempt running",
                   proc=first)
        kill_worker(first)
    assert Path(counter).read_text().count("x") == 1
    with worker_process("tests.workflows.engine_app", queues=["crash_q"], env=env, concurrency=1,
                        hostname="crash2@%h") as second:
        # The message reappears after the 2 s visibility timeout; the second run of
        # sleepy is quick (it sleeps only on its first call).
        result = Executor.wait(run_id, db, timeout=60_000)
        kill_worker(second)
    assert result.output == {"after": 2}
    assert Path(counter).read_text().count("x") == 2
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT step_name, attempt, status, output FROM swf.step_tasks "
                            "WHERE run_id = %s ORDER BY step_name", (run_id,)).fetchall()
    assert rows == [("after", 1, "completed", 2), ("slow", 1, "completed", "attempt 2")]
