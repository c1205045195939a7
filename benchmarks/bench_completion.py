"""What one step completion costs the coordinator, measured without workers.

A layered DAG of distributed steps (``LAYERS`` x ``WIDTH``, each step depending on 2 of
the layer before) is started with ``swf.start_run``; this process then plays the worker:
``swf.start_task`` and ``swf.complete_task`` for every dispatched task, on one
connection. Reported per completion: the mean time inside ``swf.complete_task`` (it
saves the output, decrements the dependents, dispatches the ready ones and emits the
events) and the SQL statements it executed (``pg_stat_statements`` with
``track = 'all'``, when the server preloads it): a count that does not depend on the
machine's load, where the time does.

``python -m benchmarks.bench_completion [rounds]`` prints both as JSON; ``make bench``
writes them to docs/benchmarks.md. Each round measures the engine's events as they are
(stored on ``workflow_events`` and NOTIFYd) and as they were before (a bare NOTIFY on
``swf:workflow_events``), alternately, in the same database.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

import psycopg

LAYERS, WIDTH = 10, 50


def _steps() -> list[dict[str, Any]]:
    steps = []
    for layer in range(LAYERS):
        for i in range(WIDTH):
            deps = [] if layer == 0 else [f"s{layer - 1}_{i}", f"s{layer - 1}_{(i + 1) % WIDTH}"]
            dependents = [] if layer == LAYERS - 1 else [
                f"s{layer + 1}_{i}", f"s{layer + 1}_{(i - 1) % WIDTH}"]
            steps.append({"name": f"s{layer}_{i}", "depends_on": deps,
                          "dependents": dependents, "execution": "distributed",
                          "task_name": "bench.noop", "queue": "bench_cost",
                          "max_attempts": 1, "retry_delay_ms": 0, "timeout_ms": None,
                          "resources": {}, "map_over": None})
    return steps


def measure(url: str) -> dict[str, float | None]:
    """One run of the DAG: ``{"ms": mean ms per completion, "statements": per completion}``
    (``statements`` is None when ``pg_stat_statements`` is not loaded)."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT count(*) FROM pg_stat_statements")
            counting = True
        except psycopg.Error:
            counting = False
        run_id = conn.execute(
            "SELECT swf.start_run('bench.completion_cost', %s::jsonb, '{}'::jsonb)",
            (json.dumps(_steps()),)).fetchone()[0]
        spent = 0.0
        done = 0
        statements = 0
        while True:
            ids = [r[0] for r in conn.execute(
                "SELECT task_id FROM swf.step_tasks WHERE run_id = %s AND status = 'queued'",
                (run_id,))]
            if not ids:
                break
            for task_id in ids:
                conn.execute("SELECT swf.start_task(%s)", (task_id,))
            before = _statements(conn) if counting else 0
            for task_id in ids:
                t0 = time.perf_counter()
                conn.execute("SELECT swf.complete_task(%s, '{\"ok\": true}'::jsonb)",
                             (task_id,))
                spent += time.perf_counter() - t0
                done += 1
            if counting:
                statements += _statements(conn) - before - 1  # the first count itself
        status = conn.execute("SELECT status FROM swf.runs WHERE id = %s",
                              (run_id,)).fetchone()[0]
        conn.execute("SELECT swf.queue_purge('bench_cost')")
    if status != "completed":
        raise RuntimeError(f"the measured run ended {status}")
    return {"ms": 1000 * spent / done, "statements": statements / done if counting else None}


def _statements(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT sum(calls) FROM pg_stat_statements WHERE dbid = (SELECT oid "
                            "FROM pg_database WHERE datname = current_database())"
                            ).fetchone()[0] or 0)


#: swf._notify as it was before events were stored (a bare NOTIFY on the reserved
#: "swf:workflow_events"), to compare in the same run: the "before" of the events change.
NOTIFY_ONLY = """
CREATE OR REPLACE FUNCTION swf._notify(p_run uuid, p_step text, p_status text) RETURNS void
LANGUAGE sql AS $$
    SELECT swf.notify_hint('swf:workflow_events',
                           json_build_object('run_id', p_run, 'step', p_step,
                                             'status', p_status)::text);
$$"""


def _current_notify(conn: psycopg.Connection[Any]) -> str:
    return str(conn.execute("SELECT pg_get_functiondef('swf._notify(uuid, text, text)'"
                            "::regprocedure)").fetchone()[0])


def summary(url: str, rounds: int = 5) -> dict[str, Any]:
    """``rounds`` alternating measurements of stored events (the engine's ``swf._notify``)
    and of the bare NOTIFY it replaced: median ms, all ms, statements, load average."""
    with psycopg.connect(url, autocommit=True) as conn:
        stored = _current_notify(conn)
    results: dict[str, list[dict[str, float | None]]] = {"stored": [], "notify_only": []}
    try:
        for i in range(rounds + 1):
            for name, body in (("stored", stored), ("notify_only", NOTIFY_ONLY)):
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(body)
                result = measure(url)
                if i:  # the first round warms up: plans, the flow row
                    results[name].append(result)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(stored)
    out: dict[str, Any] = {"load": os.getloadavg(), "rounds": rounds}
    for name, rs in results.items():
        ms = [float(r["ms"] or 0) for r in rs]
        out[name] = {"ms": statistics.median(ms), "all_ms": [round(x, 3) for x in ms],
                     "statements": rs[-1]["statements"]}
    out["ratio"] = out["stored"]["ms"] / out["notify_only"]["ms"]
    return out


def run(database_url: str) -> str:
    """The Markdown section of ``make bench``."""
    from swf_celery.db import normalize_dsn

    out = summary(normalize_dsn(database_url), int(os.environ.get("BENCH_COMPLETION_ROUNDS",
                                                                  "5")))
    load = ", ".join(f"{x:.1f}" for x in out["load"])
    stored, bare = out["stored"], out["notify_only"]
    statements = ("not counted (pg_stat_statements is not loaded)"
                  if stored["statements"] is None else
                  f"{stored['statements']:.2f} with stored events, "
                  f"{bare['statements']:.2f} with a bare NOTIFY")
    return "\n".join([
        "## Step completion: the cost of run events on `workflow_events`",
        "",
        f"A {LAYERS} x {WIDTH} layered DAG of distributed steps, completed by this process "
        "playing the worker (`swf.start_task`, then `swf.complete_task` timed), "
        f"{out['rounds']} alternating rounds after a warm-up; load average {load} (other "
        "processes shared the 2 cores).",
        "",
        "| events | ms per completion (median) | rounds |",
        "|---|---:|---|",
        f"| stored on `workflow_events` + NOTIFY of the id (now) | {stored['ms']:.3f} | "
        f"{', '.join(str(x) for x in stored['all_ms'])} |",
        f"| bare NOTIFY on `swf:workflow_events` (before) | {bare['ms']:.3f} | "
        f"{', '.join(str(x) for x in bare['all_ms'])} |",
        "",
        f"Ratio: **{out['ratio']:.3f}** (budget: 1.10). SQL statements per completion "
        f"(`pg_stat_statements`, `track = all`, independent of load): {statements}: the "
        "event's INSERT is part of the statement that NOTIFYs.",
        "",
    ])


if __name__ == "__main__":
    from swf_celery.db import database_url, normalize_dsn

    result = summary(normalize_dsn(database_url(start_embedded=True).url),
                     int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    print(json.dumps(result))
