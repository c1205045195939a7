"""Execution statistics at scale: ``workflow_statistics`` over 100,000 stored runs.

100,000 finished runs of 5 flows (4 steps each, one attempt per step; 1 in 20 failed),
started over the last 24 hours, are written straight into the engine's tables (what runs
leave behind), in a database of their own. Then ``workflow_statistics`` is timed for the
windows a dashboard asks for: the last hour of all flows, the last 24 hours of all flows
(every run), and the last 24 hours of one flow. Median of 9 calls each.
"""

from __future__ import annotations

import os
import statistics
import time

import psycopg

RUNS = int(os.environ.get("BENCH_STATS_RUNS", "100000"))
FLOWS = 5
STEPS = ("fetch", "clean", "train", "report")

FILL = """
WITH r AS (
    INSERT INTO swf.runs (flow_slug, status, total_steps, remaining_steps, inserted_at,
                          updated_at, finished_at)
    SELECT 'bench.flow_' || (i %% %(flows)s),
           CASE WHEN i %% 20 = 0 THEN 'failed' ELSE 'completed' END, 4, 0,
           now() - make_interval(secs => 86400.0 * i / %(runs)s),
           now() - make_interval(secs => 86400.0 * i / %(runs)s),
           now() - make_interval(secs => 86400.0 * i / %(runs)s)
               + make_interval(secs => 2 + (i %% 7))
      FROM generate_series(1, %(runs)s) AS i
    RETURNING id, inserted_at, status)
INSERT INTO swf.step_states (run_id, step_name, step_index, depends_on, dependents,
                             remaining_deps, status, execution, max_attempts, retry_delay_ms,
                             started_at, completed_at)
SELECT r.id, s.name, s.idx - 1, '{}', '{}', 0,
       CASE WHEN r.status = 'failed' AND s.idx = 4 THEN 'failed' ELSE 'completed' END,
       'distributed', 3, 1000,
       r.inserted_at + make_interval(secs => s.idx * 0.5),
       r.inserted_at + make_interval(secs => s.idx * 0.5 + 0.4)
  FROM r CROSS JOIN unnest(%(steps)s::text[]) WITH ORDINALITY AS s(name, idx);
-- next
INSERT INTO swf.step_tasks (run_id, step_name, task_index, task_id, execution, attempt,
                            status, queued_at, available_at, started_at, completed_at)
SELECT s.run_id, s.step_name, 0, gen_random_uuid(), 'distributed',
       1 + (s.step_index = 2)::int, s.status, s.started_at - interval '50 ms',
       s.started_at - interval '50 ms', s.started_at, s.completed_at
  FROM swf.step_states s
"""


def run(database_url: str) -> str:
    """Fill a database of its own, time the calls, return the Markdown section."""
    from swf_celery.db import normalize_dsn
    from swf_celery.ops import migrate
    from swf_celery.workflows.statistics import workflow_statistics

    url = normalize_dsn(database_url)
    name = "swf_bench_statistics"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    bench_url = psycopg.conninfo.make_conninfo(url, dbname=name)
    try:
        migrate.migrate(bench_url)
        t0 = time.perf_counter()
        with psycopg.connect(bench_url, autocommit=True) as conn:
            params = {"steps": list(STEPS), "flows": FLOWS, "runs": RUNS}
            for statement in FILL.split("-- next"):
                conn.execute(statement.encode(), params if "%(" in statement else None)
            conn.execute("ANALYZE swf.runs, swf.step_states, swf.step_tasks")
        filled = time.perf_counter() - t0
        cases = [("last hour, all flows", {"window": 3600}),
                 ("last 24 h, all flows (every run)", {"window": 86400}),
                 ("last 24 h, one flow", {"window": 86400, "workflow_slug": "bench.flow_1"})]
        rows = []
        for label, kwargs in cases:
            workflow_statistics(bench_url, **kwargs)  # warm-up
            times = []
            for _ in range(9):
                t0 = time.perf_counter()
                found = workflow_statistics(bench_url, **kwargs)
                times.append(1000 * (time.perf_counter() - t0))
            runs = sum(f.runs for f in found)
            rows.append(f"| {label} | {runs:,} | {statistics.median(times):.0f} ms | "
                        f"{max(times):.0f} ms |")
    finally:
        from swf_celery import db as swf_db

        swf_db.resolve(bench_url).close()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return "\n".join([
        "## Execution statistics at 100,000 runs",
        "",
        f"{RUNS:,} finished runs of {FLOWS} flows x {len(STEPS)} steps (one attempt each, "
        "the third step retried once; 1 in 20 runs failed), started over the last 24 h, "
        f"written straight into the tables ({filled:.0f} s). `workflow_statistics` (two "
        "queries: per flow, per step with attempts and queue waits) timed 9 times per "
        f"window. Load average during the run: {load} (other processes shared the 2 "
        "cores).",
        "",
        "| window | runs read | median | max |",
        "|---|---:|---:|---:|",
        *rows,
        "",
    ])


if __name__ == "__main__":
    from swf_celery.db import database_url

    print(run(database_url(start_embedded=True).url))
