"""Per-task cost as consumer processes grow: 1 to 32, as prefork children and as workers.

Same no-op task, result backend Redis for every broker, one queue; only the broker differs
(swf, Redis, RabbitMQ, kombu's own ``pgmq://`` with its NOTIFY wake-ups).
Two layouts of N consumer processes:

* **children**: one ``celery worker --pool=prefork -c N`` (one broker connection, N
  processes executing);
* **workers**: N ``celery worker --pool=prefork -c 1`` (N connections, each its own
  consumer asleep on the queue; the shape of many small hosts).

At each point the client sends 1000 tasks and collects every result, then makes 100
sequential round trips. Reported: throughput, CPU per task of the broker's side (workers'
main processes + the broker's server) and of everything, round-trip p50/p95. On two cores
the throughput cannot grow with processes; what the curve shows is what each added consumer
costs every task.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks import bench_scale, plots
from benchmarks.bench_scale import (
    BACKEND,
    RABBIT,
    REDIS_BROKER,
    broker_cpu,
    client_app,
    collect,
    delete_rabbit_queues,
    error_text,
    flush_redis_db,
    growth,
    latency_cell,
    pgmq_url,
    scratch_database,
    time_round_trips,
    total_cpu,
    transport_options,
)
from benchmarks.cpu import CpuMeter, postmaster_pid
from benchmarks.stats import LoadProbe, percentile
from swf_celery import db
from tests.helpers import worker_process

QUICK = os.environ.get("BENCH_SCALE_QUICK") == "1"
PROCESSES = (1, 4) if QUICK else (1, 2, 4, 8, 16, 32)
LAYOUTS = ("children", "workers")
TASKS = 1000
ROUND_TRIPS = 100
QUEUE = "procs"


@contextlib.contextmanager
def consumer_processes(broker: str, layout: str, count: int) -> Iterator[list[int]]:
    """The consumer processes of one point, started together; yields the main pids."""
    options = transport_options(broker) or json.loads(
        os.environ.get("BENCH_TRANSPORT_OPTIONS", "{}"))
    env = {"BENCH_BROKER": broker, "BENCH_BACKEND": BACKEND, "BENCH_QUEUE": QUEUE,
           "BENCH_TRANSPORT_OPTIONS": json.dumps(options)}
    shapes = [(count, "procs@%h")] if layout == "children" else \
        [(1, f"procs{i}@%h") for i in range(count)]
    managers = [worker_process("benchmarks.broker_app", queues=[QUEUE], env=env,
                               concurrency=c, pool="prefork", hostname=name,
                               ready_timeout=300) for c, name in shapes]
    # Started together (a worker takes a second or two to be ready; 32 one after the other
    # would be most of a point's time); stopped by the stack, one after the other.
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(managers)) as pool:
        yield [proc.pid for proc in pool.map(stack.enter_context, managers)]


def _point(broker: str, layout: str, count: int) -> dict[str, Any]:
    app = client_app(broker)
    try:
        with consumer_processes(broker, layout, count) as pids:
            for r in [app.send_task("bench.noop", queue=QUEUE) for _ in range(2 * count)]:
                r.get(timeout=120)  # warm-up: every pool child has its connections
            time.sleep(2.0)
            meter = CpuMeter(pids, bench_scale.POSTMASTER)
            start = time.perf_counter()
            collect([app.send_task("bench.noop", queue=QUEUE) for _ in range(TASKS)])
            elapsed = time.perf_counter() - start
            cpu = {role: s / TASKS * 1000 for role, s in meter.stop().items()}
            latencies = time_round_trips(app, [QUEUE], ROUND_TRIPS)
    finally:
        app.close()
    return {"throughput": TASKS / elapsed, "cpu": cpu, "round_trips": len(latencies),
            "p50": percentile(latencies, 50) * 1000, "p95": percentile(latencies, 95) * 1000}


def processes_shape(database_url: str) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """Each broker and layout at each process count (brokers alternate within a count)."""
    brokers = ["swf", "Redis", "RabbitMQ", "kombu pgmq"]
    out: dict[tuple[str, str], dict[int, dict[str, Any]]] = {
        (b, layout): {} for layout in LAYOUTS for b in brokers}
    for layout in LAYOUTS:
        for n, count in enumerate(PROCESSES):
            for name in brokers if n % 2 == 0 else list(reversed(brokers)):
                print(f"   {layout}={count}: {name}", flush=True)
                try:
                    if name == "swf":
                        with scratch_database(database_url, f"p{count}") as url:
                            point = _point(db.broker_url(url), layout, count)
                    elif name == "Redis":
                        flush_redis_db(REDIS_BROKER)
                        point = _point(REDIS_BROKER, layout, count)
                        flush_redis_db(REDIS_BROKER)
                    elif name == "kombu pgmq":
                        with scratch_database(database_url, f"pp{count}") as url:
                            point = _point(pgmq_url(url), layout, count)
                    else:
                        point = _point(RABBIT, layout, count)
                        delete_rabbit_queues([QUEUE])
                except Exception as exc:  # noqa: BLE001 - a failed point is reported
                    point = {"error": error_text(exc)}
                out[(name, layout)][count] = point
                print(f"      {point}", flush=True)
    return out


def _table(data: dict[tuple[str, str], dict[int, dict[str, Any]]]) -> list[str]:
    lines = ["| broker | layout | processes | throughput (tasks/s) | broker CPU/task (ms) "
             "| all CPU/task (ms) | p50 (ms) | p95 (ms) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (name, layout), points in data.items():
        for count, p in points.items():
            if "error" in p:
                lines.append(f"| {name} | {layout} | {count} | failed: {p['error']} | | | | |")
                continue
            lines.append(f"| {name} | {layout} | {count} | {p['throughput']:.0f} "
                         f"| {broker_cpu(p):.2f} | {total_cpu(p):.2f} "
                         f"| {latency_cell(p, 'p50')} | {latency_cell(p, 'p95')} |")
    lines += ["", f"Growth from {PROCESSES[0]} to {PROCESSES[-1]} processes:", "",
              "| broker | layout | broker CPU/task | all CPU/task | p50 | p95 |",
              "|---|---|---:|---:|---:|---:|"]
    for (name, layout), points in data.items():
        lines.append(f"| {name} | {layout} | {growth(points, broker_cpu)} "
                     f"| {growth(points, total_cpu)} | {growth(points, 'p50')} "
                     f"| {growth(points, 'p95')} |")
    return lines


def _plot(data: dict[tuple[str, str], dict[int, dict[str, Any]]]) -> str | None:
    """docs/img/processes-curve.png; None without matplotlib (the bench extra has it)."""
    plt = plots.pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for (name, layout), points in data.items():
        ok = {k: v for k, v in points.items() if "error" not in v}
        style = "-" if layout == "children" else "--"
        axes[0].plot(list(ok), [broker_cpu(v) for v in ok.values()], marker="o",
                     linestyle=style, label=f"{name}, {layout}")
        axes[1].plot(list(ok), [v["p50"] for v in ok.values()], marker="o", linestyle=style,
                     label=f"{name}, {layout}")
    axes[0].set(xscale="log", xlabel="consumer processes", ylabel="broker CPU per task (ms)",
                title="Per-task broker CPU vs consumer processes")
    axes[1].set(xscale="log", yscale="log", xlabel="consumer processes",
                ylabel="round trip p50 (ms, log scale)",
                title="Round trip vs consumer processes")
    return plots.save(fig, "processes-curve.png", axes)


def run(database_url: str) -> str:
    """Measure every point; return the Markdown section."""
    bench_scale.POSTMASTER = postmaster_pid(database_url)
    probe = LoadProbe()
    data = processes_shape(database_url)
    picture = _plot(data)
    lines = [
        "## Consumer processes: 1 to 32 (`bench_processes`)",
        "",
        "Command: `python -m benchmarks.run bench_processes` (part of `make bench`). No-op "
        "task, result backend Redis for every broker, one queue; kombu pgmq is kombu's own "
        "`pgmq://` transport with `use_notify` on. *children*: one worker "
        "`--pool=prefork -c N`; *workers*: N workers `--pool=prefork -c 1`, each with its "
        f"own broker connection. {TASKS} tasks sent then collected, then {ROUND_TRIPS} "
        "sequential round trips; one run per point. \"broker CPU\" is the workers' main "
        "processes plus the broker's server; \"all CPU\" adds the client and the pool "
        "children. Two cores: throughput cannot grow with processes; the curve is what each "
        "added consumer costs every task.",
        "",
        probe.note(),
        "",
        *_table(data),
        "",
    ]
    if picture:
        lines += [f"![per-task cost vs consumer processes]({picture})", ""]
    return "\n".join(lines)
