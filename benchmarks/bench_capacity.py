"""What one task and one workflow step cost PostgreSQL: the inputs of the capacity model.

On a scratch database of the benchmark server, with swf:// as broker and result backend:

* **idle**: one ``celery worker --pool=prefork -c 2``, idle, for 10 s: PostgreSQL's CPU
  that a worker costs per second whatever it runs (keeper ticks, sweeps);
* **task, busy**: the client sends 2000 no-op tasks and collects each result (``get()``):
  a worker that always has work reads many messages a statement and never sleeps;
* **task, one at a time**: 300 sequential ``apply_async().get()``: each task wakes an idle
  worker (the wake-up, a read of one message, the sleep after), as tasks do at low rates;
* **step**: a 1000-step workflow (:func:`benchmarks.bench_workflow.layered_workflow`, 20
  layers of 50) run by one worker;
* **run**: 60 runs of a three-step workflow (:class:`benchmarks.churn_app.ThreeSteps`)
  started with ``Executor.start`` two a second, nobody waiting on them: what a run costs
  beyond its steps is in it (its start, its events, its driver's lease).

For each: PostgreSQL's CPU (every backend of the server, from ``/proc``), the WAL written
(``pg_current_wal_lsn``), and the commits (``pg_stat_database.xact_commit``), per task or
per step. docs/scale-out.md turns them into tasks and steps per PostgreSQL core and checks
the prediction against a run they were not fitted on (``make churn``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg

from benchmarks.bench_scale import scratch_database
from benchmarks.cpu import CpuMeter, postmaster_pid
from benchmarks.stats import LoadProbe
from swf_celery import db
from tests.helpers import worker_process

TASKS = 2000
SEQUENTIAL = 300
RUNS = 60
IDLE_SECONDS = 10.0


def _counters(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(WAL bytes written so far, commits of this database so far)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, xact_commit FROM pg_stat_database "
        "WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


class Measure:
    """PostgreSQL's CPU, WAL and commits between construction and :meth:`per`."""

    def __init__(self, conn: psycopg.Connection[Any], worker_pid: int, postmaster: int | None,
                 ) -> None:
        self.conn = conn
        self.meter = CpuMeter(worker_pid, postmaster)
        self.start = time.perf_counter()
        self.wal, self.commits = _counters(conn)

    def per(self, units: int) -> dict[str, float]:
        """Costs per unit of work (ms of PostgreSQL CPU, WAL bytes, commits) and the
        elapsed time."""
        elapsed = time.perf_counter() - self.start
        cpu = self.meter.stop()
        wal, commits = _counters(self.conn)
        return {"pg_ms": cpu.get("PostgreSQL", 0.0) * 1000 / units,
                "worker_ms": (cpu.get("worker main", 0.0) + cpu.get("pool children", 0.0))
                * 1000 / units,
                "client_ms": cpu.get("client", 0.0) * 1000 / units,
                "wal": (wal - self.wal) / units, "commits": (commits - self.commits) / units,
                "rate": units / elapsed, "seconds": elapsed}


def _tasks(url: str, postmaster: int | None) -> dict[str, dict[str, float]]:
    from celery import Celery

    swf = db.broker_url(url)
    env = {"BENCH_BROKER": swf, "BENCH_BACKEND": swf, "BENCH_QUEUE": "capacity"}
    app = Celery("capacity_client", broker=swf, backend=swf, set_as_current=False)
    app.conf.update(task_default_queue="capacity")
    try:
        with psycopg.connect(url, autocommit=True) as conn, \
                worker_process("benchmarks.broker_app", queues=["capacity"], env=env,
                               concurrency=2, pool="prefork") as worker:
            for r in [app.send_task("bench.noop") for _ in range(20)]:
                r.get(timeout=60)
            time.sleep(3.0)
            idle = Measure(conn, worker.pid, postmaster)
            time.sleep(IDLE_SECONDS)
            idle_cost = idle.per(1)
            measure = Measure(conn, worker.pid, postmaster)
            for r in [app.send_task("bench.noop") for _ in range(TASKS)]:
                r.get(timeout=300)
            busy = measure.per(TASKS)
            measure = Measure(conn, worker.pid, postmaster)
            for _ in range(SEQUENTIAL):
                app.send_task("bench.noop").get(timeout=60)
            sparse = measure.per(SEQUENTIAL)
    finally:
        app.close()
    idle_cost = {k: v / IDLE_SECONDS if k != "seconds" else v for k, v in idle_cost.items()}
    return {"idle": idle_cost, "task": busy, "sparse": sparse}


def _steps(url: str, postmaster: int | None) -> dict[str, dict[str, float]]:
    from benchmarks import churn_app, workflow_app
    from benchmarks.bench_workflow import LAYERS, WIDTH, layered_workflow
    from swf_celery.workflows.executor import Executor

    layered = layered_workflow(workflow_app.noop)
    env = {"SWF_DATABASE_URL": url, "BENCH_BROKER": "swf"}
    with psycopg.connect(url, autocommit=True) as conn:
        with worker_process("benchmarks.workflow_app", queues=["bench_workflow"], env=env,
                            concurrency=2, pool="prefork") as worker:
            Executor.execute(layered, {}, url, timeout=600_000)  # warm-up
            measure = Measure(conn, worker.pid, postmaster)
            Executor.execute(layered, {}, url, timeout=600_000)
            step = measure.per(LAYERS * WIDTH)
        with worker_process("benchmarks.churn_app", queues=["churn"], env=env,
                            concurrency=2, pool="prefork") as worker:
            Executor.execute(churn_app.ThreeSteps, {}, url, timeout=60_000)  # warm-up
            measure = Measure(conn, worker.pid, postmaster)
            runs = []
            for _ in range(RUNS):
                runs.append(Executor.start(churn_app.ThreeSteps, {}, url))
                time.sleep(0.5)
            for run_id in runs:
                Executor.wait(run_id, url, timeout=60_000)
            run = measure.per(RUNS)
    return {"step": step, "run": run}


def measure_costs(database_url: str) -> dict[str, dict[str, float]]:
    """The idle worker's, a task's and a step's costs on a scratch database."""
    postmaster = postmaster_pid(database_url)
    os.environ.update({"BENCH_BROKER": "swf"})
    with scratch_database(database_url, "capacity") as url:
        dsn = db.normalize_dsn(url)
        os.environ["SWF_DATABASE_URL"] = dsn  # before workflow_app is imported
        return {**_tasks(dsn, postmaster), **_steps(dsn, postmaster)}


def run(database_url: str) -> str:
    """Measure; return the Markdown section."""
    probe = LoadProbe()
    costs = measure_costs(database_url)
    idle = costs["idle"]
    return "\n".join([
        "## Capacity inputs: PostgreSQL's cost per task and per step (`bench_capacity`)",
        "",
        "Command: `python -m benchmarks.run bench_capacity` (part of `make bench`). swf:// "
        "broker and result backend, one worker `--pool=prefork -c 2`, no-op tasks; the "
        f"client sends {TASKS} tasks and collects each result; the workflow is the 1000-step "
        "layered DAG of `bench_workflow`. PostgreSQL's CPU is every backend of the server "
        "(from `/proc`); WAL from `pg_current_wal_lsn()`; commits from `pg_stat_database`. "
        "The capacity model built on them: [scale-out.md](scale-out.md#capacity-model).",
        "",
        probe.note(),
        "",
        "| work | rate (per s) | PostgreSQL CPU (ms) | worker CPU (ms) | client CPU (ms) | "
        "WAL (bytes) | commits |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| an idle worker, per second | - | {idle['pg_ms']:.2f} | {idle['worker_ms']:.2f} "
        f"| - | {idle['wal']:,.0f} | {idle['commits']:.1f} |",
        *[f"| {label} | {c['rate']:.0f} | {c['pg_ms']:.3f} | {c['worker_ms']:.3f} "
          f"| {c['client_ms']:.3f} | {c['wal']:,.0f} | {c['commits']:.1f} |"
          for label, c in ((LABELS[k], costs[k]) for k in ("task", "sparse", "step", "run"))],
        "",
    ])


LABELS = {
    "task": "one task, busy worker (publish, run, result stored and read)",
    "sparse": "one task at a time (the same, waking an idle worker)",
    "step": "one workflow step (start, complete, dispatch), busy worker",
    "run": "one three-step run started and left alone (its steps included)",
}
