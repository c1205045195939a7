"""Table bloat under churn: an hour of tasks and workflow runs, autovacuum at its defaults.

``make churn`` (``python -m benchmarks.run bench_churn``; not part of ``make bench``: it
takes ``BENCH_CHURN_MINUTES``, 60 by default). On a scratch database of the benchmark server,
one ``celery -A benchmarks.churn_app worker --pool=prefork -c 2`` (swf:// broker and result
backend, every setting at its default) serves a client that, for the whole time,

* publishes ``BENCH_CHURN_RATE`` no-op tasks per second (50) and collects each result with
  ``get()`` from another thread, as a web app's request handlers would;
* starts one three-step workflow run per second (``Executor.start``, nobody waits on it).

Every 30 s it samples ``pg_stat_user_tables`` for the ``swf`` and ``pgmq`` schemas (live and
dead tuples, total size with indexes and TOAST, autovacuum runs) and the WAL position. The
section reports, per table, its size after the first tenth of the run and at the end, the
most dead tuples seen, and the autovacuums; the plot (``docs/img/churn.png``) shows the
tables' sizes and dead tuples over time. A table whose size keeps growing while its live
rows do not is bloat; rows kept by the retention policy (results until their expiry, runs
for 30 days) are growth by design and are shown apart. The WAL bytes and the statements per
task and per workflow step feed the capacity model (docs/scale-out.md).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any

import psycopg

from benchmarks import plots
from benchmarks.bench_scale import scratch_database
from benchmarks.cpu import CpuMeter, postmaster_pid
from benchmarks.stats import LoadProbe
from swf_celery import db

#: Not part of a plain ``make bench`` (:mod:`benchmarks.run` runs it only when named).
LONG = True
MINUTES = float(os.environ.get("BENCH_CHURN_MINUTES", "60"))
TASK_RATE = float(os.environ.get("BENCH_CHURN_RATE", "50"))
RUNS_PER_SECOND = 1.0
SAMPLE_EVERY = 30.0
STEPS_PER_RUN = 3

SAMPLE = """
SELECT s.schemaname || '.' || s.relname, s.n_live_tup, s.n_dead_tup,
       pg_total_relation_size(s.relid), s.autovacuum_count,
       s.n_tup_ins + s.n_tup_upd + s.n_tup_del
  FROM pg_stat_user_tables s
 WHERE s.schemaname IN ('swf', 'pgmq')
"""


def _sample(conn: psycopg.Connection[Any], started: float) -> dict[str, Any]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    tables = {name: {"live": live, "dead": dead, "size": size, "autovacuums": vacuums,
                     "writes": writes}
              for name, live, dead, size, vacuums, writes in conn.execute(SAMPLE).fetchall()}
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    wal = row[0] if row else 0
    return {"t": time.monotonic() - started, "tables": tables, "wal": int(wal)}


class Client:
    """The churn's client: tasks at a fixed rate, results collected, runs started."""

    def __init__(self, url: str, seconds: float) -> None:
        from benchmarks import churn_app

        self.app = churn_app.app
        self.workflow = churn_app.ThreeSteps
        self.url = url
        self.deadline = time.monotonic() + seconds
        self.pending: queue.Queue[Any] = queue.Queue()
        self.published = self.collected = self.failed = self.runs = 0
        self.errors: list[str] = []

    def publish(self) -> None:
        interval = 1.0 / TASK_RATE
        next_at = time.monotonic()
        while (now := time.monotonic()) < self.deadline:
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            try:
                self.pending.put(self.app.send_task("churn.noop", args=[self.published]))
                self.published += 1
            except Exception as exc:  # noqa: BLE001 - counted and shown
                self.errors.append(f"publish: {exc}"[:200])
        self.pending.put(None)

    def collect(self) -> None:
        while (result := self.pending.get()) is not None:
            try:
                result.get(timeout=120)
                self.collected += 1
            except Exception as exc:  # noqa: BLE001 - counted and shown
                self.failed += 1
                self.errors.append(f"get: {exc}"[:200])

    def start_runs(self) -> None:
        from swf_celery.workflows.executor import Executor

        next_at = time.monotonic()
        while (now := time.monotonic()) < self.deadline:
            if now < next_at:
                time.sleep(next_at - now)
            next_at += 1.0 / RUNS_PER_SECOND
            try:
                Executor.start(self.workflow, {}, self.url)
                self.runs += 1
            except Exception as exc:  # noqa: BLE001 - counted and shown
                self.errors.append(f"run: {exc}"[:200])


def churn(url: str, seconds: float) -> dict[str, Any]:
    """Run the churn on ``url`` for ``seconds``; the samples and the counts."""
    from tests.helpers import worker_process

    os.environ["SWF_DATABASE_URL"] = url  # before churn_app is imported
    samples: list[dict[str, Any]] = []
    with psycopg.connect(url, autocommit=True) as conn, \
            worker_process("benchmarks.churn_app", queues=["churn"], concurrency=2,
                           pool="prefork", env={"SWF_DATABASE_URL": url}) as worker:
        client = Client(url, seconds)
        meter = CpuMeter(worker.pid, postmaster_pid(url))
        started = time.monotonic()
        samples.append(_sample(conn, started))
        threads = [threading.Thread(target=f, daemon=True)
                   for f in (client.publish, client.collect, client.start_runs)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads[::2]):
            time.sleep(SAMPLE_EVERY)
            samples.append(_sample(conn, started))
            print(f"   {samples[-1]['t']:.0f} s: {client.published} tasks, {client.runs} runs",
                  flush=True)
        threads[1].join(300)
        cpu = meter.stop()
        busy = time.monotonic() - started
        time.sleep(10)  # the last runs finish
        samples.append(_sample(conn, started))
        statuses: dict[str, int] = dict(conn.execute("SELECT status, count(*) FROM swf.runs "
                                     "GROUP BY 1").fetchall())
        client.app.close()
    return {"samples": samples, "published": client.published, "collected": client.collected,
            "failed": client.failed, "runs": client.runs, "statuses": statuses,
            "cpu": {role: spent / busy for role, spent in cpu.items()},
            "errors": client.errors[:5]}


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.2f}"


def _table(report: dict[str, Any]) -> list[str]:
    samples = report["samples"]
    first, last = samples[0]["tables"], samples[-1]["tables"]
    early = samples[max(1, len(samples) // 10)]["tables"]
    rows = []
    for name in sorted(last, key=lambda n: -last[n]["size"]):
        written = last[name]["writes"] - first.get(name, {}).get("writes", 0)
        if not written and last[name]["size"] == first.get(name, {}).get("size"):
            continue
        dead_max = max(s["tables"].get(name, {}).get("dead", 0) for s in samples)
        then = early.get(name, {"live": 0, "size": 0})
        rows.append(f"| `{name}` | {written:,} | {then['live']:,} → {last[name]['live']:,} | "
                    f"{_mb(then['size'])} → {_mb(last[name]['size'])} | {dead_max:,} | "
                    f"{last[name]['dead']:,} | {last[name]['autovacuums']} | "
                    f"{verdict(then, last[name])} |")
    return ["| table | rows written | live rows, 1/10 → end | MB, 1/10 → end | "
            "most dead rows seen | dead rows at end | autovacuums | reading |",
            "|---|---:|---:|---:|---:|---:|---:|---|", *rows[:18]]


def verdict(early: dict[str, int], end: dict[str, int]) -> str:
    """How a table's size moved from a tenth of the run to its end: *flat*, *rows kept*
    (it grew with its live rows: retention keeps them) or *bloat* (it grew while its live
    rows did not)."""
    if end["size"] <= max(1.5 * early["size"], early["size"] + 1024 * 1024):
        return "flat"
    if end["live"] > 1.5 * max(early["live"], 1):
        return "rows kept"
    return "bloat"


def _plot(report: dict[str, Any]) -> str | None:
    """docs/img/churn.png; None without matplotlib (the bench extra installs it)."""
    plt = plots.pyplot()
    if plt is None:
        return None
    samples = report["samples"]
    last = samples[-1]["tables"]
    top = sorted(last, key=lambda n: -last[n]["size"])[:8]
    minutes = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for name in top:
        axes[0].plot(minutes, [s["tables"].get(name, {}).get("size", 0) / 2**20
                               for s in samples], label=name)
        axes[1].plot(minutes, [s["tables"].get(name, {}).get("dead", 0) for s in samples],
                     label=name)
    axes[0].set(xlabel="minutes", ylabel="MB (with indexes, TOAST)", title="Table sizes")
    axes[1].set(xlabel="minutes", ylabel="dead tuples", title="Dead tuples")
    return plots.save(fig, "churn.png", axes)


def run(database_url: str) -> str:
    """Run the churn on a scratch database; return the Markdown section."""
    probe = LoadProbe()
    with scratch_database(database_url, "churn") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_reset()")
        report = churn(db.normalize_dsn(url), MINUTES * 60)
    samples = report["samples"]
    wal = samples[-1]["wal"] - samples[0]["wal"]
    work = report["published"] + report["runs"] * STEPS_PER_RUN
    picture = _plot(report)
    lines = [
        "## Table bloat under an hour of churn (`bench_churn`)",
        "",
        f"Command: `make churn` (`python -m benchmarks.run bench_churn`, "
        f"`BENCH_CHURN_MINUTES={MINUTES:g}`). One worker `--pool=prefork -c 2`, swf:// broker "
        f"and result backend, every setting at its default (autovacuum included; the worker's "
        f"retention pass runs a minute after start, then hourly). For {MINUTES:g} minutes a "
        f"client published {TASK_RATE:g} no-op tasks/s and collected each result, and started "
        f"{RUNS_PER_SECOND:g} three-step workflow run per second that nobody waited on.",
        "",
        probe.note(),
        "",
        f"Done: {report['published']:,} tasks published, {report['collected']:,} results "
        f"collected, {report['failed']} failed; {report['runs']:,} runs started "
        f"({', '.join(f'{k}: {v:,}' for k, v in sorted(report['statuses'].items()))}). "
        f"WAL: {wal / 2**20:.0f} MB, {wal / max(1, work):,.0f} bytes per task or step. "
        "CPU in cores (seconds per second) over the run: "
        + ", ".join(f"{role} {used:.3f}" for role, used in report["cpu"].items()
                    if used >= 0.0005) + ".",
        "",
        *_table(report),
        "",
    ]
    if report["errors"]:
        lines += ["First errors: " + "; ".join(report["errors"]), ""]
    if picture:
        lines += [f"![table sizes and dead tuples over the run]({picture})", ""]
    return "\n".join(lines)
