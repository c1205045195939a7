"""Bounded storage benchmark: cancels against a large backlog, catalog growth on restarts.

- Backlog: ``SWF_BENCH_CANCEL_QUEUES`` (100) durable queues of ``SWF_BENCH_CANCEL_BACKLOG``
  (100000) queued messages each, filled with one ``INSERT … SELECT generate_series`` per
  queue in a database of its own (dropped afterwards).
- Revoke: ``app.control.revoke(task_id)`` of one queued task (the broadcast plus the
  deletion of its queued message from every queue); the same revoke on Celery's Redis
  broker, measured in the same run, for reference (Redis only broadcasts: the queued
  message stays until a worker fetches and discards it).
- Workflow cancel: ``cancel_workflow_run`` of a run whose next step is queued; canvas
  cancel: ``cancel_canvas`` of a root id with ten messages in every queue.
- The deletion without the task/root id indexes (index scans switched off): what every
  cancel cost before.
- Catalog: ``max(oid)`` and row count of ``pg_class`` before and after 20 starts and stops of
  ``celery events`` and 20 of a worker with a new node name, and what one durable queue
  adds, for comparison.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from celery import Celery
from psycopg import sql

from benchmarks.stats import summary_ms
from swf_celery import db
from swf_celery.db import load_queries
from swf_celery.ops import migrate
from swf_celery.transport.names import queue_table
from tests.helpers import ROOT, create_task_runs, swf_url, wait_until, worker_process

QUERIES = load_queries("benchmarks", "storage.sql")
QUEUES = int(os.environ.get("SWF_BENCH_CANCEL_QUEUES", "100"))
BACKLOG = int(os.environ.get("SWF_BENCH_CANCEL_BACKLOG", "100000"))
RESTARTS = int(os.environ.get("SWF_BENCH_RESTARTS", "20"))
REPEAT = 10
REDIS_BROKER = "redis://127.0.0.1:6379/13"
APP = "tests.transport.broker_app"

NOTES = """\
### Where the time goes

Measured separately on the same machine (100 queues x 1,000 messages, so everything is in
memory): a canvas cancel of 1,000 messages takes ~38 ms, of which ~27 ms is the per-queue
loop itself (one planned `EXECUTE` per queue table, ~0.27 ms each, even when nothing
matches); deleting ten messages of one table by the root id index takes ~1 ms. Against the
10M-message backlog the same cancel takes ~300 ms: its 1,000 messages sit on 1,000 different
heap pages, each with five index entries, far outside the server's `shared_buffers`, so the
difference is page reads and the WAL of the deletes, not scanning (a full scan per table,
the previous behaviour, took ~7.8 s for a single task id). A revoke costs one index probe per
queue plus Celery's broadcast; Celery on Redis only broadcasts (the queued message stays in
Redis until a worker fetches and discards it, and workers started without `--statedb`
forget the revoke), which is why it is cheaper.
"""


def _database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    migrate.migrate(url)
    return url


def _drop(server_url: str, url: str) -> None:
    db.resolve(url).close()
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(str(name))))


def _table(conn: psycopg.Connection[Any], queue: str) -> sql.Identifier:
    name = conn.execute("SELECT pgmq_name FROM swf.queue_ensure(%s, 0)", (queue,)).fetchone()
    return sql.Identifier(*queue_table(str(name[0])))  # type: ignore[index]


def _fill(url: str) -> float:
    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(QUEUES):
            table = _table(conn, f"backlog_{i}")
            conn.execute(sql.SQL(QUERIES["fill"]).format(table=table),
                         {"prefix": f"q{i}-", "roots": max(1, BACKLOG // 10), "n": BACKLOG})
        conn.execute("ANALYZE")
    return time.perf_counter() - start


def _timed(action: Any, args: list[Any]) -> list[float]:
    out = []
    for arg in args:
        start = time.perf_counter()
        action(arg)
        out.append(time.perf_counter() - start)
    return out


def _cancels(url: str) -> dict[str, Any]:
    from swf_celery import cancel_canvas, cancel_workflow_run
    from swf_celery.workflows import coordinator
    from tests.workflows.sample_flows import chain

    rng = random.Random(7)
    app = Celery("bench-revoke", broker=swf_url(url), set_as_current=False)
    results: dict[str, Any] = {}
    try:
        app.control.revoke("warm-up")
        ids = [f"q{rng.randrange(QUEUES)}-{rng.randrange(1, BACKLOG + 1)}" for _ in range(REPEAT)]
        results["revoke"] = summary_ms(_timed(app.control.revoke, ids))
        database = db.resolve(url)
        runs = [coordinator.start_run(database, chain("a", "b", queue="backlog_0"), {})
                for _ in range(REPEAT)]
        results["workflow"] = summary_ms(_timed(
            lambda r: cancel_workflow_run(r, url, app=app), runs))
        roots = [f"root-{rng.randrange(BACKLOG // 10)}" for _ in range(REPEAT)]
        removed: list[int] = []
        results["canvas"] = summary_ms(_timed(
            lambda r: removed.append(cancel_canvas(r, url, app=app).removed), roots))
        results["canvas_removed"] = max(removed)
        with psycopg.connect(url, autocommit=True) as conn:
            start = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute(QUERIES["full_scan"], {"task_ids": ["q0-1"]})
            conn.execute("COMMIT")
            results["full_scan_ms"] = (time.perf_counter() - start) * 1000
    finally:
        app.close()
    try:
        redis = Celery("bench-revoke-redis", broker=REDIS_BROKER, set_as_current=False)
        redis.control.revoke("warm-up")
        results["redis"] = summary_ms(_timed(redis.control.revoke,
                                             [f"r{i}" for i in range(REPEAT)]))
        redis.close()
    except Exception as exc:  # noqa: BLE001 - reported in the section
        results["redis_error"] = f"{type(exc).__name__}: {exc}"
    return results


def _catalog(url: str) -> tuple[int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(QUERIES["catalog_top"]).fetchone()
    return int(row[0]), int(row[1])  # type: ignore[index]


def _celery_env(broker: str) -> dict[str, str]:
    return dict(os.environ, SWF_TEST_BROKER=broker, PYTHONPATH=str(ROOT))


@contextlib.contextmanager
def _monitor(url: str, broker: str) -> Iterator[None]:
    def queues() -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            return int(conn.execute("SELECT count(*) FROM swf.queues WHERE name LIKE "
                                    "'celeryev.%%'").fetchone()[0])  # type: ignore[index]

    before = queues()
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", APP, "events", "--dump"],
                            env=_celery_env(broker), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: queues() > before or proc.poll() is not None, timeout=60,
                   what="celery events")
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _restarts(server_url: str) -> dict[str, Any]:
    url = _database(server_url, "swf_bench_catalog")
    try:
        create_task_runs(url)
        broker = swf_url(url)
        env = {"SWF_TEST_BROKER": broker}
        with worker_process(APP, queues=["celery"], env=env, hostname="w0@%h",
                            extra_args=["-E"], pool="solo"):
            pass
        out: dict[str, Any] = {"start": _catalog(url)}
        for _ in range(RESTARTS):
            with _monitor(url, broker):
                pass
        out["monitors"] = _catalog(url)
        for i in range(1, RESTARTS + 1):
            with worker_process(APP, queues=["celery"], env=env, hostname=f"w{i}@%h",
                                extra_args=["-E"], pool="solo"):
                pass
        out["workers"] = _catalog(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT swf.queue_ensure('one_durable_queue', 0)")
        out["durable"] = _catalog(url)
        return out
    finally:
        _drop(server_url, url)


def run(database_url: str) -> str:
    server = psycopg.conninfo.make_conninfo(db.normalize_dsn(database_url), dbname="postgres")
    url = _database(server, "swf_bench_backlog")
    try:
        fill = _fill(url)
        cancels = _cancels(url)
    finally:
        _drop(server, url)
    cat = _restarts(server)
    rows = QUEUES * BACKLOG

    def ms(s: dict[str, float]) -> str:
        return f"{s['p50']:.1f} | {s['p95']:.1f}"

    lines = [
        "## Storage: cancels against a backlog, catalog on restarts (`bench_storage`)",
        "",
        f"Backlog: {QUEUES} queues x {BACKLOG:,} queued messages = {rows:,} messages "
        f"(filled in {fill:.0f} s, one `INSERT … SELECT generate_series` per queue). "
        f"{REPEAT} operations each, p50 / p95 in ms. Load average at the end: "
        f"{os.getloadavg()[0]:.1f} (2 cores, shared).",
        "",
        "| operation | p50 ms | p95 ms |",
        "|---|---:|---:|",
        f"| revoke of one queued task (`app.control.revoke`: broadcast + index delete in "
        f"{QUEUES} queues) | {ms(cancels['revoke'])} |",
        f"| workflow cancel (`cancel_workflow_run`, next step queued) | "
        f"{ms(cancels['workflow'])} |",
        f"| canvas cancel (`cancel_canvas`, {cancels['canvas_removed']} messages over all "
        f"queues) | {ms(cancels['canvas'])} |",
    ]
    if "redis" in cancels:
        ratio = cancels["revoke"]["p50"] / cancels["redis"]["p50"]
        lines.append(f"| Celery on Redis: `app.control.revoke` (broadcast only; queued "
                     f"message stays) | {ms(cancels['redis'])} |")
        redis_note = f"swf revoke / Redis revoke (p50): {ratio:.1f}x."
    else:
        redis_note = f"Redis not measured: {cancels['redis_error']}."
    lines += [
        "",
        f"{redis_note} Without the task/root id indexes (index scans off, every queue table "
        f"read in full, as before) removing one task took "
        f"{cancels['full_scan_ms']:,.0f} ms.",
        "",
        f"Catalog (`pg_class`: max oid, rows) over {RESTARTS} starts and stops of "
        f"`celery events` and {RESTARTS} of `celery worker -E -n w<i>@%h`:",
        "",
        "| moment | max(oid) | relations |",
        "|---|---:|---:|",
        f"| after a first worker (durable `celery` queue created) | {cat['start'][0]} | "
        f"{cat['start'][1]} |",
        f"| after {RESTARTS} monitors | {cat['monitors'][0]} | {cat['monitors'][1]} |",
        f"| after {RESTARTS} workers with new node names | {cat['workers'][0]} | "
        f"{cat['workers'][1]} |",
        f"| after declaring one durable queue, for comparison | {cat['durable'][0]} | "
        f"{cat['durable'][1]} |",
        "",
        f"New relations per restart: "
        f"{(cat['workers'][1] - cat['start'][1]) / (2 * RESTARTS):.1f} (transient queues are "
        f"rows of `swf.transient_messages`); one durable pgmq queue adds "
        f"{cat['durable'][1] - cat['workers'][1]} relations.",
        "",
    ]
    return "\n".join(lines) + "\n" + NOTES
