"""Broker benchmark: swf:// against Redis, RabbitMQ and kombu's own pgmq:// transport.

Same no-op task, same result backend (Redis), worker ``--pool=prefork -c 2``; only the broker
differs. Per broker: throughput (2000 tasks sent, then joined) and latency (200 sequential
``apply_async().get()``). Brokers run back to back, three rounds, the order reversed every
other round; the table shows each figure's median over the rounds with its range, each
ratio to Redis is the median of the per-round ratios (every round shown), and the section
records the machine's load at its start and end (a run on a loaded machine is marked as
such). Then the enqueue rate of ``swf.queue_send`` with 8 producer threads, wake-ups off and
on, and with a NOTIFY on every insert for comparison.

``swf`` runs with its defaults (publishes commit asynchronously, like Redis and RabbitMQ do not
fsync each publish by default); the ``durable_publish=True`` row makes every publish wait for
its WAL flush.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

import swf_celery  # noqa: F401 - registers swf://
from benchmarks.bench_scale import PGMQ_OPTIONS, pgmq_url
from benchmarks.cpu import CpuMeter
from benchmarks.stats import (
    LoadProbe,
    median_of,
    per_round,
    percentile,
    ratio_text,
    ratios,
    round_order,
    run_together,
    spread,
)
from swf_celery import db
from tests.helpers import worker_process

TASKS = 2000
ROUND_TRIPS = 200
ROUNDS = 3
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
RABBIT = os.environ.get("BENCH_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND = f"{REDIS}/13"


def _brokers(database_url: str) -> dict[str, tuple[str, dict[str, Any]]]:
    pg = db.broker_url(database_url)
    return {
        "swf (this project)": (pg, {}),
        "swf, hand_over=True": (pg, {"hand_over": True}),
        "swf, durable_publish=True": (pg, {"durable_publish": True}),
        "swf, event_loop=False": (pg, {"event_loop": False}),
        "Redis": (f"{REDIS}/12", {}),
        "RabbitMQ": (RABBIT, {}),
        "kombu pgmq (use_notify)": (pgmq_url(database_url), PGMQ_OPTIONS),
    }


def _client(broker: str, options: dict[str, Any], queue: str) -> Any:
    from celery import Celery

    app = Celery("bench_client", broker=broker, backend=BACKEND, set_as_current=False)
    app.conf.update(broker_transport_options=options, task_default_queue=queue,
                    result_expires=600)
    return app


def _measure(name: str, broker: str, options: dict[str, Any]) -> dict[str, Any]:
    queue = f"bench-broker-{os.getpid()}"
    env = {"BENCH_BROKER": broker, "BENCH_BACKEND": BACKEND, "BENCH_QUEUE": queue,
           "BENCH_TRANSPORT_OPTIONS": json.dumps(options)}
    app = _client(broker, options, queue)
    try:
        with worker_process("benchmarks.broker_app", queues=[queue], env=env, concurrency=2,
                            pool="prefork", ready_timeout=90) as worker:
            send = app.send_task
            for r in [send("bench.noop") for _ in range(20)]:  # warm-up: connections, forks
                r.get(timeout=60)
            meter = CpuMeter(worker.pid)
            start, wall_start = time.perf_counter(), time.time()
            results = [send("bench.stamp") for _ in range(TASKS)]
            sent = time.perf_counter()
            last_run = max(r.get(timeout=300) for r in results)
            done = time.perf_counter()
            cpu = {role: seconds / TASKS * 1000 for role, seconds in meter.stop().items()}
            latencies = []
            for _ in range(ROUND_TRIPS):
                t0 = time.perf_counter()
                send("bench.noop").get(timeout=60)
                latencies.append(time.perf_counter() - t0)
    finally:
        app.close()
    return {"throughput": TASKS / (done - start), "send_rate": TASKS / (sent - start),
            "run_rate": TASKS / max(1e-9, last_run - wall_start),
            "p50": percentile(latencies, 50) * 1000, "p95": percentile(latencies, 95) * 1000,
            "cpu": cpu}


#: Idle-worker stops per broker and way of stopping.
STOPS = 5


def _stop_seconds(broker: str, group: bool) -> float:
    """Seconds from SIGTERM (to the main process, or to its whole process group as systemd
    sends it) until an idle ``--pool=prefork -c 2`` worker has exited."""
    queue = f"bench-stop-{os.getpid()}"
    env = {"BENCH_BROKER": broker, "BENCH_BACKEND": BACKEND, "BENCH_QUEUE": queue,
           "BENCH_TRANSPORT_OPTIONS": "{}"}
    with worker_process("benchmarks.broker_app", queues=[queue], env=env, concurrency=2,
                        pool="prefork", ready_timeout=90) as proc:
        time.sleep(1.0)  # idle, past start-up
        start = time.perf_counter()
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except Exception:  # noqa: BLE001 - a hung worker is reported as such
            return float("nan")
        return time.perf_counter() - start


def _stop_times(database_url: str) -> dict[str, dict[str, list[float]]]:
    brokers = {"swf": db.broker_url(database_url), "Redis": f"{REDIS}/12"}
    times: dict[str, dict[str, list[float]]] = {b: {"main": [], "group": []} for b in brokers}
    for i in range(STOPS):
        for name in brokers if i % 2 == 0 else reversed(list(brokers)):
            for way in ("main", "group"):
                times[name][way].append(_stop_seconds(brokers[name], way == "group"))
                print(f"   stop {name} ({way}): {times[name][way][-1]:.2f}s", flush=True)
    return times


def _stop_section(times: dict[str, dict[str, list[float]]]) -> list[str]:
    def cell(values: list[float]) -> str:
        done = [v for v in values if v == v]
        if not done:
            return "hung"
        hung = len(values) - len(done)
        return (f"{statistics.median(done):.2f} (max {max(done):.2f})"
                + (f", {hung} hung" if hung else ""))

    lines = ["", f"Idle worker warm shutdown (`--pool=prefork -c 2`, {STOPS} stops each, "
             "seconds from SIGTERM to exit, median and max):", "",
             "| broker | SIGTERM to the main process | SIGTERM to the process group |",
             "|---|---:|---:|"]
    for name, ways in times.items():
        lines.append(f"| {name} | {cell(ways['main'])} | {cell(ways['group'])} |")
    swf, redis = times.get("swf"), times.get("Redis")
    if swf and redis:
        for way in ("main", "group"):
            a = [v for v in swf[way] if v == v]
            b = [v for v in redis[way] if v == v]
            if a and b and len(a) == len(swf[way]):
                ok = statistics.median(a) <= statistics.median(b) + 0.5
                lines.append(f"- target <= Redis + 0.5 s ({way}): "
                             f"{statistics.median(a):.2f} vs {statistics.median(b):.2f} s — "
                             f"{'met' if ok else 'missed'}")
            else:
                lines.append(f"- target <= Redis + 0.5 s ({way}): a worker hung")
    return lines


def _enqueue_rate(database_url: str, mode: str, threads: int = 8,
                  per_thread: int = 500) -> tuple[float, int | None]:
    """swf.queue_send calls per second from ``threads`` autocommit producers."""
    queue = f"bench-enqueue-{mode}-{os.getpid()}"
    message = {"body": "[[], {}, {}]", "content-type": "application/json",
               "content-encoding": "utf-8", "headers": {"id": "x", "task": "bench.noop"},
               "properties": {"delivery_info": {}, "delivery_tag": "t", "priority": 0}}
    with psycopg.connect(database_url, autocommit=True) as admin:
        pgmq_name = admin.execute("SELECT pgmq_name FROM swf.queue_ensure(%s)",
                                  [queue]).fetchone()[0]
        if mode == "notify-every-insert":
            admin.execute("SELECT pgmq.enable_notify_insert(%s, 0)", [pgmq_name])
    stop = threading.Event()
    consumer: threading.Thread | None = None
    woken: list[int] = []
    if mode == "wakeups-on":
        consumer = threading.Thread(target=_consume_until,
                                    args=(database_url, queue, stop, woken))
        consumer.start()
        time.sleep(0.5)

    def produce(barrier: threading.Barrier) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            barrier.wait()
            for _ in range(per_thread):
                conn.execute("SELECT swf.queue_send(%s, %s)", [queue, Jsonb(message)])

    start = run_together(produce, threads)
    elapsed = time.perf_counter() - start
    stop.set()
    if consumer is not None:
        consumer.join(30)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT swf.queue_drop(%s)", [queue])
    return threads * per_thread / elapsed, (woken[0] if woken else None)


def _consume_until(database_url: str, queue: str, stop: threading.Event,
                   woken: list[int]) -> None:
    from kombu import Connection, Consumer, Queue

    url = db.broker_url(database_url)
    with Connection(url) as conn:
        with Consumer(conn.channel(), [Queue(queue)], accept=["json"],
                      callbacks=[lambda body, msg: msg.ack()]):
            while not stop.is_set():
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
            woken.append(conn.transport.wakeup().notifications)


#: A broker's rounds, in round order; None for a round in which it failed.
Rounds = list[dict[str, Any] | None]


def run(database_url: str) -> str:
    probe = LoadProbe()
    brokers = _brokers(database_url)
    every: dict[str, Rounds] = {name: [] for name in brokers}
    errors: dict[str, str] = {}
    for round_no in range(ROUNDS):
        for name in round_order(list(brokers), round_no):
            print(f"   round {round_no + 1}: {name}", flush=True)
            try:
                m: dict[str, Any] | None = _measure(name, *brokers[name])
            except Exception as exc:  # a broker that fails is reported, not fatal
                errors[name] = _error(exc)
                m = None
            print(f"      {m}", flush=True)
            every[name].append(m)
    every = {name: ms for name, ms in every.items() if any(ms)}
    rates: dict[str, tuple[float, int | None]] = {}
    for mode in ("wakeups-off", "wakeups-on", "notify-every-insert"):
        print(f"   enqueue rate: {mode}", flush=True)
        rates[mode] = _enqueue_rate(database_url, mode)
    stops = _stop_times(database_url)
    return (_section(every, errors, rates, probe.note()) + "\n".join(_stop_section(stops))
            + "\n")


def _error(exc: Exception) -> str:
    """The exception's type, its message's first line and, for a longer message (a worker's
    log), its last line: where a traceback names the cause."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    return f"{type(exc).__name__}: {text[:300]}"


#: The figures of a round that the tables report.
FIGURES = ("throughput", "send_rate", "run_rate", "p50", "p95")


def _figure(rounds: Rounds, key: str) -> list[float]:
    """One figure of every round, NaN for a failed round."""
    return [m[key] if m else float("nan") for m in rounds]


def _median_round(rounds: Rounds) -> dict[str, Any]:
    """The round whose throughput is the median of the broker's rounds."""
    done = sorted((m for m in rounds if m), key=lambda m: m["throughput"])
    return done[(len(done) - 1) // 2]


def _cpu_section(every: dict[str, Rounds]) -> list[str]:
    """CPU per task by process in each broker's median throughput round, and the rate that CPU
    allows on this machine's cores (tasks/s <= cores / CPU per task)."""
    cpu = {name: _median_round(rounds)["cpu"] for name, rounds in every.items()}
    roles: list[str] = []
    for by_role in cpu.values():
        roles += [r for r in by_role if r not in roles]
    cores = os.cpu_count() or 1
    lines = ["", f"CPU per task (ms) in each broker's median throughput round (not the best), "
             f"by process; \"bound\" is the rate that CPU allows on {cores} cores "
             "(cores / total CPU per task):", "",
             "| broker | " + " | ".join(roles) + " | total | bound (tasks/s) |",
             "|---|" + "---:|" * (len(roles) + 2)]
    for name, by_role in cpu.items():
        total = sum(by_role.values())
        cells = " | ".join(f"{by_role.get(r, 0.0):.2f}" for r in roles)
        bound = f"{cores / total * 1000:.0f}" if total else "-"
        lines.append(f"| {name} | {cells} | {total:.2f} | {bound} |")
    return lines


def _ratio(ours: Rounds, theirs: Rounds, key: str) -> list[float]:
    """``key`` of ours over theirs, round by round."""
    return ratios(_figure(ours, key), _figure(theirs, key))


def _targets(every: dict[str, Rounds], errors: dict[str, str]) -> list[str]:
    """The target lines: medians of the rounds, and each ratio the median of the per-round
    ratios with every round shown."""
    swf = every.get("swf (this project)", [])
    redis = every.get("Redis", [])
    pgmq = every.get("kombu pgmq (use_notify)", [])
    lines = ["", "Targets (same run; figures are medians of the rounds, each ratio the median "
             "of the per-round ratios, every round shown):", ""]

    def versus(key: str, spec: str, unit: str) -> str:
        return (f"{median_of(_figure(swf, key)):{spec}} vs "
                f"{median_of(_figure(redis, key)):{spec}} {unit}")

    if swf and redis:
        thr = _ratio(swf, redis, "throughput")
        lines.append(f"- throughput >= 1.3x Redis: {versus('throughput', '.0f', 'tasks/s')}, "
                     f"{ratio_text(thr)} — {'met' if median_of(thr) >= 1.3 else 'missed'}")
        lines.append(f"- (not a target) run rate, swf vs Redis: "
                     f"{versus('run_rate', '.0f', 'tasks/s')}, "
                     f"{ratio_text(_ratio(swf, redis, 'run_rate'))}")
        p50 = _ratio(swf, redis, "p50")
        lines.append(f"- p50 latency <= 1.0x Redis: {versus('p50', '.2f', 'ms')}, "
                     f"{ratio_text(p50)} — {'met' if median_of(p50) <= 1.0 else 'missed'}")
        lines.append(f"- (not a target) p95 latency, swf vs Redis: {versus('p95', '.2f', 'ms')}, "
                     f"{ratio_text(_ratio(swf, redis, 'p95'))}")
    if swf and pgmq:
        thr = _ratio(swf, pgmq, "throughput")
        lines.append(f"- throughput >= 1.3x kombu pgmq: {ratio_text(thr)} — "
                     f"{'met' if median_of(thr) >= 1.3 else 'missed'}")
    elif swf:
        lines.append(f"- throughput >= 1.3x kombu pgmq: kombu pgmq failed "
                     f"({errors.get('kombu pgmq (use_notify)', 'not run')})")
    return lines


def _section(every: dict[str, Rounds], errors: dict[str, str],
             rates: dict[str, tuple[float, int | None]], load: str) -> str:
    lines = [
        "## Broker (`bench_broker`)",
        "",
        "Command: `python -m benchmarks.run bench_broker` (part of `make bench`). No-op task, "
        "worker `--pool=prefork -c 2`, result backend Redis for every broker. Throughput: "
        f"{TASKS} tasks sent then joined (each result `get()` in turn), and the rate up to "
        "the start of the last task (\"run rate\": the broker and the worker, without the "
        f"client's collection of the results); latency: {ROUND_TRIPS} sequential "
        f"`apply_async().get()`. {ROUNDS} rounds, the brokers' order reversed every other "
        "round; each figure is the median of the rounds, with their range in brackets.",
        "",
        load,
        "",
        "| broker | throughput (tasks/s) | run rate (tasks/s) | send rate (tasks/s) "
        "| p50 latency (ms) | p95 latency (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, ms in every.items():
        lines.append(f"| {name} | {spread(_figure(ms, 'throughput'), '.0f')} "
                     f"| {spread(_figure(ms, 'run_rate'), '.0f')} "
                     f"| {spread(_figure(ms, 'send_rate'), '.0f')} "
                     f"| {spread(_figure(ms, 'p50'), '.2f')} "
                     f"| {spread(_figure(ms, 'p95'), '.2f')} |")
    for name, err in errors.items():
        if name not in every:
            lines.append(f"| {name} | failed: {err} | | | | |")
    lines += ["", "Every round (the machine is shared with other work; rounds vary):", "",
              "| broker | throughput per round | run rate per round | p50 per round (ms) "
              "| p95 per round (ms) |",
              "|---|---|---|---|---|"]
    for name, ms in every.items():
        lines.append(f"| {name} | {per_round(_figure(ms, 'throughput'), '.0f')} "
                     f"| {per_round(_figure(ms, 'run_rate'), '.0f')} "
                     f"| {per_round(_figure(ms, 'p50'), '.2f')} "
                     f"| {per_round(_figure(ms, 'p95'), '.2f')} |")
    lines += _cpu_section(every)
    lines += _targets(every, errors)
    lines += [
        "",
        "Enqueue rate of `swf.queue_send` (the SQL interface, synchronous commit on), "
        "8 producer threads, 4000 messages, one run each (absolute rates, no ratio):",
        "",
        "| wake-ups | messages/s | NOTIFYs received by the consumer |",
        "|---|---:|---:|",
        f"| off (no consumer waiting) | {rates['wakeups-off'][0]:.0f} | - |",
        f"| on (a consumer idles, is woken, drains the queue concurrently) | "
        f"{rates['wakeups-on'][0]:.0f} | {rates['wakeups-on'][1]} |",
        f"| NOTIFY on every insert (`pgmq.enable_notify_insert`, throttle 0), for comparison "
        f"| {rates['notify-every-insert'][0]:.0f} | - |",
        "",
        "The 'on' row includes the consumer's reads and acks competing for the same two cores; "
        "the NOTIFY count shows how far wake-ups were coalesced (one per idle period, not one "
        "per message). Where the time goes (py-spy, statements per task, CPU per thread, the "
        "round trip split in parts, the stop): docs/broker-profile.md.",
        "",
    ]
    return "\n".join(lines)
