"""Broker benchmark: swf:// against Redis, RabbitMQ and kombu's own pgmq:// transport.

Same no-op task, same result backend (Redis), worker ``--pool=prefork -c 2``; only the broker
differs. Per broker: throughput (2000 tasks sent, then joined) and latency (200 sequential
``apply_async().get()``). Brokers run back to back, three rounds, alternating; the table shows
each figure's median over the rounds with its range, and the machine's load at the start and
the end (a run on a loaded machine is marked as such). Then the enqueue
rate of ``swf.queue_send`` with 8 producer threads, wake-ups off and on, and with a NOTIFY on
every insert for comparison.

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
from urllib.parse import urlsplit

import psycopg
from psycopg.types.json import Jsonb

import swf_celery  # noqa: F401 - registers swf://
from benchmarks.cpu import CpuMeter
from benchmarks.stats import percentile, run_together
from swf_celery import db
from tests.helpers import worker_process

TASKS = 2000
ROUND_TRIPS = 200
ROUNDS = 3
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
RABBIT = os.environ.get("BENCH_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND = f"{REDIS}/13"


def _brokers(database_url: str) -> dict[str, tuple[str, dict[str, Any]]]:
    parts = urlsplit(database_url)
    pg = db.broker_url(database_url)
    return {
        "swf (this project)": (pg, {}),
        "swf, durable_publish=True": (pg, {"durable_publish": True}),
        "swf, event_loop=False": (pg, {"event_loop": False}),
        "Redis": (f"{REDIS}/12", {}),
        "RabbitMQ": (RABBIT, {}),
        "kombu pgmq (use_notify)": (parts._replace(scheme="pgmq").geturl(),
                                    {"use_notify": True, "init_extension": False}),
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


def _fmt(value: float, spec: str) -> str:
    return format(value, spec) if value == value else "failed"


def run(database_url: str) -> str:
    brokers = _brokers(database_url)
    every: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    load_start = os.getloadavg()[0]
    for round_no in range(ROUNDS):
        order = list(brokers) if round_no % 2 == 0 else list(reversed(brokers))
        for name in order:
            print(f"   round {round_no + 1}: {name}", flush=True)
            try:
                m = _measure(name, *brokers[name])
            except Exception as exc:  # a broker that fails is reported, not fatal
                errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                continue
            print(f"      {m}", flush=True)
            every.setdefault(name, []).append(m)
    typical = {name: _typical(ms) for name, ms in every.items()}
    rates: dict[str, tuple[float, int | None]] = {}
    for mode in ("wakeups-off", "wakeups-on", "notify-every-insert"):
        print(f"   enqueue rate: {mode}", flush=True)
        rates[mode] = _enqueue_rate(database_url, mode)
    stops = _stop_times(database_url)
    loads = (load_start, os.getloadavg()[0])
    return (_section(typical, every, errors, rates, loads) + "\n".join(_stop_section(stops))
            + "\n")


#: The figures of a round that the tables report.
FIGURES = ("throughput", "send_rate", "run_rate", "p50", "p95")


def _typical(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds, its (min, max) under ``range``, and the CPU
    table of the round whose throughput is the median."""
    out: dict[str, Any] = {k: statistics.median(m[k] for m in rounds) for k in FIGURES}
    out["range"] = {k: (min(m[k] for m in rounds), max(m[k] for m in rounds)) for k in FIGURES}
    out["cpu"] = sorted(rounds, key=lambda m: m["throughput"])[len(rounds) // 2]["cpu"]
    return out


def _spread(m: dict[str, Any], key: str, spec: str) -> str:
    """``median (min-max)`` of one figure."""
    lo, hi = m["range"][key]
    if lo == hi:
        return _fmt(m[key], spec)
    return f"{_fmt(m[key], spec)} ({_fmt(lo, spec)}–{_fmt(hi, spec)})"


def _cpu_section(typical: dict[str, dict[str, Any]]) -> list[str]:
    """CPU per task by process in each broker's median throughput round, and the rate that CPU
    allows on this machine's cores (tasks/s <= cores / CPU per task)."""
    roles: list[str] = []
    for m in typical.values():
        roles += [r for r in m["cpu"] if r not in roles]
    cores = os.cpu_count() or 1
    lines = ["", f"CPU per task (ms) in each broker's median throughput round, by process; "
             f"\"bound\" is the rate that CPU allows on {cores} cores "
             "(cores / total CPU per task):", "",
             "| broker | " + " | ".join(roles) + " | total | bound (tasks/s) |",
             "|---|" + "---:|" * (len(roles) + 2)]
    for name, m in typical.items():
        total = sum(m["cpu"].values())
        cells = " | ".join(f"{m['cpu'].get(r, 0.0):.2f}" for r in roles)
        bound = f"{cores / total * 1000:.0f}" if total else "-"
        lines.append(f"| {name} | {cells} | {total:.2f} | {bound} |")
    return lines


def _section(typical: dict[str, dict[str, Any]], every: dict[str, list[dict[str, Any]]],
             errors: dict[str, str],
             rates: dict[str, tuple[float, int | None]], loads: tuple[float, float]) -> str:
    cores = os.cpu_count() or 1
    loaded = max(loads) > 0.75 * cores
    lines = [
        "## Broker (`bench_broker`)",
        "",
        "Command: `python -m benchmarks.run bench_broker` (part of `make bench`). No-op task, "
        "worker `--pool=prefork -c 2`, result backend Redis for every broker. Throughput: "
        f"{TASKS} tasks sent then joined (each result `get()` in turn), and the rate up to "
        "the start of the last task (\"run rate\": the broker and the worker, without the "
        f"client's collection of the results); latency: {ROUND_TRIPS} sequential "
        f"`apply_async().get()`. {ROUNDS} rounds, brokers alternating; each figure is the "
        "median of the rounds, with their range in brackets. Load average (1 min) at the "
        f"start {loads[0]:.1f} and at the end {loads[1]:.1f} on {cores} cores"
        + (": **a loaded machine** (other jobs shared the cores; absolute figures are low "
           "and noisy, compare within a round)." if loaded else "."),
        "",
        "| broker | throughput (tasks/s) | run rate (tasks/s) | send rate (tasks/s) "
        "| p50 latency (ms) | p95 latency (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in typical.items():
        lines.append(f"| {name} | {_spread(m, 'throughput', '.0f')} "
                     f"| {_spread(m, 'run_rate', '.0f')} | {_spread(m, 'send_rate', '.0f')} "
                     f"| {_spread(m, 'p50', '.2f')} | {_spread(m, 'p95', '.2f')} |")
    for name, err in errors.items():
        if name not in typical:
            lines.append(f"| {name} | failed: {err} | | | | |")
    lines += ["", "Every round (the machine is shared with other work; rounds vary):", "",
              "| broker | throughput per round | run rate per round | p50 per round (ms) |",
              "|---|---|---|---|"]
    for name, ms in every.items():
        per_round = " / ".join(format(m["throughput"], ".0f") for m in ms)
        runs = " / ".join(format(m["run_rate"], ".0f") for m in ms)
        p50s = " / ".join(format(m["p50"], ".2f") for m in ms)
        lines.append(f"| {name} | {per_round} | {runs} | {p50s} |")
    lines += _cpu_section(typical)
    ours, theirs = every.get("swf (this project)", []), every.get("Redis", [])
    if ours and len(ours) == len(theirs):
        pairs = list(zip(ours, theirs, strict=True))
        thr = " / ".join(f"{a['throughput'] / b['throughput']:.2f}x" for a, b in pairs)
        run = " / ".join(f"{a['run_rate'] / b['run_rate']:.2f}x" for a, b in pairs)
        lat = " / ".join(f"{a['p50'] / b['p50']:.2f}x" for a, b in pairs)
        lines += ["", f"Per round, swf vs Redis: throughput {thr}; run rate {run}; "
                  f"p50 latency {lat}."]
    swf = typical.get("swf (this project)", {})
    redis = typical.get("Redis", {})
    pgmq = typical.get("kombu pgmq (use_notify)", {})
    lines += ["", "Targets (same run, medians of the rounds):", ""]
    if swf and redis:
        ok = swf["throughput"] >= 1.3 * redis["throughput"]
        lines.append(f"- throughput >= 1.3x Redis: {swf['throughput']:.0f} vs "
                     f"{redis['throughput']:.0f} tasks/s "
                     f"({swf['throughput'] / redis['throughput']:.2f}x) — "
                     f"{'met' if ok else 'missed'}")
        lines.append(f"- (not a target) run rate, swf vs Redis: {swf['run_rate']:.0f} vs "
                     f"{redis['run_rate']:.0f} tasks/s "
                     f"({swf['run_rate'] / redis['run_rate']:.2f}x)")
        ratio = swf["p50"] / redis["p50"]
        lines.append(f"- p50 latency <= 1.2x Redis: {swf['p50']:.2f} vs {redis['p50']:.2f} ms "
                     f"({ratio:.2f}x) — {'met' if ratio <= 1.2 else 'missed'}")
    if swf and pgmq:
        ratio = swf["throughput"] / pgmq["throughput"]
        lines.append(f"- throughput >= 1.3x kombu pgmq: {ratio:.2f}x — "
                     f"{'met' if ratio >= 1.3 else 'missed'}")
    elif swf:
        lines.append(f"- throughput >= 1.3x kombu pgmq: kombu pgmq failed "
                     f"({errors.get('kombu pgmq (use_notify)', 'not run')})")
    lines += [
        "",
        "Enqueue rate of `swf.queue_send` (the SQL interface, synchronous commit on), "
        "8 producer threads, 4000 messages:",
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
