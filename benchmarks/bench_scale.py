"""Cost curves: how the broker's costs grow as queues, listeners and backlogs grow.

Same no-op task, same result backend (Redis), worker ``--pool=prefork -c 2``; only the broker
differs (swf, Redis, RabbitMQ and kombu's own ``pgmq://`` transport with its NOTIFY wake-ups).
Procrastinate and PgQueuer, Postgres-native job queues a user might pick instead, run their
simplest no-op job in the queue-count and backlog shapes beside them (``peer_curves``).
Each shape changes one dimension and keeps the rest at its smallest:

* **queues**: one worker consumes N queues (1, 10, 100, 1,000) that exist and are consumed;
  the client sends tasks round-robin over them, then makes sequential round trips on random
  ones. Per-task CPU (worker main process + the broker's server) and round-trip p50/p95.
* **backlog**: a queue already holds B messages (0, 10,000, 100,000, 1,000,000). The cost of
  one read (and ack) and of one publish into it, measured as the broker's own statement or
  command from a client, then the rate at which a worker drains it.
* **listeners**: N idle LISTEN sessions (0, 10, 100: idle workers' wake-up connections and
  result waiters are such sessions) on the database while the round trips run; PostgreSQL
  signals every listening backend of the database at each NOTIFY's commit.

Each shape's server state is made fresh: a scratch database per point for swf and kombu pgmq
(migrated, which installs pgmq, then dropped), a scratch Redis db and RabbitMQ queues deleted
after. ``BENCH_SCALE_MAX_BACKLOG``
caps the backlog sizes (default 1,000,000); ``BENCH_SCALE_QUICK=1`` runs two points of each.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

import swf_celery  # noqa: F401 - registers swf://
from benchmarks import plots
from benchmarks.cpu import CpuMeter, postmaster_pid
from benchmarks.stats import percentile
from swf_celery import db
from swf_celery.ops import migrate
from swf_celery.transport.storage import QueueStorage
from tests.helpers import worker_process

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
RABBIT = os.environ.get("BENCH_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND = f"{REDIS}/13"
REDIS_BROKER = f"{REDIS}/11"

#: ``BENCH_SCALE_QUICK=1`` runs the two smallest points of each shape (a check of the
#: benchmark itself, not a measurement).
QUICK = os.environ.get("BENCH_SCALE_QUICK") == "1"
QUEUE_COUNTS = (1, 10) if QUICK else (1, 10, 100, 1000)
BACKLOGS = tuple(b for b in ((0, 10_000) if QUICK else (0, 10_000, 100_000, 1_000_000))
                 if b <= int(os.environ.get("BENCH_SCALE_MAX_BACKLOG", "1000000")))
LISTENERS = (0, 10) if QUICK else (0, 10, 100)
#: Tasks sent round-robin over the queues per point, and sequential round trips after.
TASKS = 1000
ROUND_TRIPS = 100
#: Statements timed per backlog point, and seconds of draining measured.
PROBES = 200
DRAIN_SECONDS = 10.0
BROKER_ROLES = ("worker main", "PostgreSQL", "redis-server", "RabbitMQ")
#: kombu's pgmq:// transport as every benchmark runs it: NOTIFY wake-ups on, pgmq installed
#: by the migration (as SQL where the extension is absent), not by kombu.
PGMQ_OPTIONS = {"use_notify": True, "init_extension": False}


# -- scratch state -------------------------------------------------------------------------


@contextmanager
def scratch_database(database_url: str, label: str, *, migrated: bool = True
                     ) -> Iterator[str]:
    """A freshly created database beside ``database_url``, migrated unless ``migrated`` is
    false (another system's schema goes there); dropped after."""
    name = f"bench_scale_{label}_{os.getpid()}"
    parts = urlsplit(database_url)
    admin_url = urlunsplit(parts._replace(path="/postgres"))

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))

    drop()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(parts._replace(path="/" + name))
    if migrated:
        migrate.migrate(url)
    try:
        yield url
    finally:
        db.resolve(url).close()
        drop()


def flush_redis_db(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def delete_rabbit_queues(names: list[str]) -> None:
    from kombu import Connection

    with Connection(RABBIT) as conn:
        channel = conn.channel()
        for name in names:
            try:
                channel.queue_delete(name)
            except Exception:  # noqa: BLE001 - a queue that is gone already
                channel = conn.channel()


# -- one worker, N queues ------------------------------------------------------------------


def pgmq_url(database_url: str) -> str:
    """kombu's ``pgmq://`` URL of a database (kombu passes a URL's query on as Connection
    arguments, not libpq options: the query goes)."""
    return urlunsplit(urlsplit(database_url)._replace(scheme="pgmq", query=""))


def transport_options(broker: str) -> dict[str, Any]:
    """The transport options every benchmark gives ``broker`` (kombu pgmq's)."""
    return PGMQ_OPTIONS if broker.startswith("pgmq://") else {}


def client_app(broker: str) -> Any:
    from celery import Celery

    app = Celery("bench_scale_client", broker=broker, backend=BACKEND, set_as_current=False)
    app.conf.update(result_expires=600, task_default_queue="scale-0",
                    broker_transport_options=transport_options(broker))
    return app


def _cpu_ms(meter: CpuMeter, tasks: int) -> dict[str, float]:
    return {role: seconds / tasks * 1000 for role, seconds in meter.stop().items()}


#: Seconds a point's round trips may take in all: past it, with at least MIN_ROUND_TRIPS
#: made, the point keeps those (a broker whose round trip takes seconds).
ROUND_TRIP_BUDGET = 30.0
MIN_ROUND_TRIPS = 5
#: Seconds a point's batch of tasks may take to be collected before the point fails.
BATCH_BUDGET = 120.0


def time_round_trips(app: Any, queues: list[str], count: int) -> list[float]:
    """Up to ``count`` sequential round trips on random ``queues`` (see ROUND_TRIP_BUDGET)."""
    rng = random.Random(7)
    out: list[float] = []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        app.send_task("bench.noop", queue=rng.choice(queues)).get(timeout=60)
        out.append(time.perf_counter() - t0)
        if len(out) >= MIN_ROUND_TRIPS and time.perf_counter() - start > ROUND_TRIP_BUDGET:
            break
    return out


def collect(results: list[Any], budget: float = BATCH_BUDGET) -> None:
    """Wait for every result, within ``budget`` seconds in all (TimeoutError names how many
    were done)."""
    deadline = time.monotonic() + budget
    for done, r in enumerate(results):
        left = deadline - time.monotonic()
        try:
            r.get(timeout=max(left, 0.1))
        except Exception as exc:
            if time.monotonic() < deadline:
                raise
            raise TimeoutError(f"{done} of {len(results)} tasks done in {budget:.0f} s"
                               ) from exc


#: The PostgreSQL server whose processes count as "PostgreSQL" (set by run()).
POSTMASTER: int | None = None


def _queues_point(broker: str, count: int) -> dict[str, Any]:
    queues = [f"scale-{i}" for i in range(count)]
    env = {"BENCH_BROKER": broker, "BENCH_BACKEND": BACKEND, "BENCH_QUEUE": queues[0],
           "BENCH_TRANSPORT_OPTIONS": json.dumps(transport_options(broker))}
    app = client_app(broker)
    started = time.perf_counter()
    try:
        with worker_process("benchmarks.broker_app", queues=queues, env=env, concurrency=2,
                            pool="prefork", ready_timeout=600) as worker:
            ready = time.perf_counter() - started
            for r in [app.send_task("bench.noop", queue=q) for q in queues[:20]]:
                r.get(timeout=120)  # warm-up: connections, forks
            time.sleep(5.0)  # the first pass over every queue and its arms are over
            idle = CpuMeter(worker.pid, POSTMASTER)
            time.sleep(5.0)
            idle_cpu = {role: s / 5.0 * 1000 for role, s in idle.stop().items()}
            meter = CpuMeter(worker.pid, POSTMASTER)
            start = time.perf_counter()
            collect([app.send_task("bench.noop", queue=queues[i % count])
                     for i in range(TASKS)])
            elapsed = time.perf_counter() - start
            cpu = _cpu_ms(meter, TASKS)
            latencies = time_round_trips(app, queues, ROUND_TRIPS)
    finally:
        app.close()
    return {"ready": ready, "throughput": TASKS / elapsed, "cpu": cpu, "idle": idle_cpu,
            "p50": percentile(latencies, 50) * 1000, "p95": percentile(latencies, 95) * 1000,
            "round_trips": len(latencies)}


def queues_shape(database_url: str) -> dict[str, dict[int, dict[str, Any]]]:
    """Each broker (and each peer of ``peer_curves``) at each queue count (alternating
    within each count)."""
    from benchmarks import peer_curves  # it builds on this module (via bench_peers)

    out: dict[str, dict[int, dict[str, Any]]] = {"swf": {}, "Redis": {}, "RabbitMQ": {},
                                                 "kombu pgmq": {}}
    out.update({name: {} for name in peer_curves.PEERS})
    for n, count in enumerate(QUEUE_COUNTS):
        order = list(out) if n % 2 == 0 else list(reversed(out))
        for name in order:
            print(f"   queues={count}: {name}", flush=True)
            try:
                if name in peer_curves.PEERS:
                    out[name][count] = peer_curves.queues_point(name, database_url, count)
                elif name == "swf":
                    with scratch_database(database_url, f"q{count}") as url:
                        out[name][count] = _queues_point(db.broker_url(url), count)
                elif name == "Redis":
                    flush_redis_db(REDIS_BROKER)
                    out[name][count] = _queues_point(REDIS_BROKER, count)
                    flush_redis_db(REDIS_BROKER)
                elif name == "kombu pgmq":
                    with scratch_database(database_url, f"p{count}") as url:
                        out[name][count] = _queues_point(pgmq_url(url), count)
                else:
                    out[name][count] = _queues_point(RABBIT, count)
                    delete_rabbit_queues([f"scale-{i}" for i in range(count)])
            except Exception as exc:  # noqa: BLE001 - a failed point is reported, not fatal
                out[name][count] = {"error": error_text(exc)}
            print(f"      {out[name][count]}", flush=True)
    return out


# -- backlog -------------------------------------------------------------------------------


def _publish_one(broker: str, queue: str) -> None:
    app = client_app(broker)
    try:
        app.send_task("bench.noop", queue=queue, ignore_result=True)
    finally:
        app.close()


def _fill_table(conn: psycopg.Connection[Any], table: sql.Composable, backlog: int) -> float:
    """Copy the one message in ``table`` until it holds ``backlog``; seconds taken."""
    t0 = time.perf_counter()
    if backlog > 1:
        conn.execute(sql.SQL(
            "INSERT INTO {t} (vt, message, headers) SELECT m.vt, m.message, m.headers "
            "FROM {t} m, generate_series(1, %s) WHERE m.msg_id = "
            "(SELECT min(msg_id) FROM {t})").format(t=table), [backlog - 1])
        conn.execute(sql.SQL("VACUUM ANALYZE {t}").format(t=table))
        with contextlib.suppress(psycopg.Error):  # the fill's WAL written out first
            conn.execute("CHECKPOINT")
    return time.perf_counter() - t0


def _table_drain(conn: psycopg.Connection[Any], table: sql.Composable, broker: str,
                 queue: str, backlog: int) -> float:
    """The drain rate of ``queue`` (NaN without a backlog), sized by counting ``table``."""
    if backlog <= 1:
        return float("nan")
    size_sql = sql.SQL("SELECT count(*) FROM {t} WHERE vt <= clock_timestamp()"
                       ).format(t=table)
    return _drain_rate(broker, queue, lambda: conn.execute(size_sql).fetchone()[0])


def backlog_result(fill: float, reads: list[float], sends: list[float],
                    drain: float) -> dict[str, Any]:
    return {"fill": fill, "read_p50": percentile(reads, 50) * 1000,
            "read_p95": percentile(reads, 95) * 1000, "send_p50": percentile(sends, 50) * 1000,
            "send_p95": percentile(sends, 95) * 1000, "drain": drain}


def _swf_backlog_point(url: str, backlog: int) -> dict[str, Any]:
    queue = "scale-backlog"
    broker = db.broker_url(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT swf.queue_ensure(%s)", [queue])
        _publish_one(broker, queue)
        row = conn.execute("SELECT pgmq_name, storage FROM swf.queues WHERE name = %s",
                           [queue]).fetchone()
        assert row is not None
        storage = QueueStorage(queue, row[0], row[1])
        table = storage.table()
        fill = _fill_table(conn, table, backlog)
        message = conn.execute(sql.SQL("SELECT message FROM {t} LIMIT 1").format(t=table)
                               ).fetchone()[0]
        reads, sends = [], []
        read, send = storage.statement("read"), storage.statement("send")
        acks: list[int] = []
        receipts: list[int] = []
        for _ in range(PROBES):
            t = time.perf_counter()
            rows = conn.execute(read, {"queue": queue, "acks": acks, "receipts": receipts,
                                       "qty": 4, "vt": 60.0}).fetchall()
            reads.append(time.perf_counter() - t)
            got = [r for r in rows if r[1] is not None]
            acks, receipts = [r[0] for r in got], [r[1] for r in got]
            t = time.perf_counter()
            conn.execute(send, {"queue": queue, "commit": "off",
                                "message": json.dumps(message), "delay": 0})
            sends.append(time.perf_counter() - t)
        drain = _table_drain(conn, table, broker, queue, backlog)
    return backlog_result(fill, reads, sends, drain)


def _redis_backlog_point(backlog: int) -> dict[str, Any]:
    import redis

    queue = "scale-backlog"
    flush_redis_db(REDIS_BROKER)
    client = redis.Redis.from_url(REDIS_BROKER)
    _publish_one(REDIS_BROKER, queue)
    message = client.lindex(queue, 0)
    assert message is not None
    t0 = time.perf_counter()
    left = backlog - 1
    while left > 0:
        pipe = client.pipeline(transaction=False)
        for _ in range(min(left, 10_000)):
            pipe.lpush(queue, message)
        pipe.execute()
        left -= 10_000
    fill = time.perf_counter() - t0
    reads, sends = [], []
    for _ in range(PROBES):  # the transport's read: BRPOP, then the unacked bookkeeping
        t = time.perf_counter()
        client.brpop([queue], timeout=1)
        reads.append(time.perf_counter() - t)
        t = time.perf_counter()
        client.lpush(queue, message)
        sends.append(time.perf_counter() - t)
    drain = (_drain_rate(REDIS_BROKER, queue, lambda: client.llen(queue))
             if backlog > 1 else float("nan"))
    flush_redis_db(REDIS_BROKER)
    return backlog_result(fill, reads, sends, drain)


def _pgmq_backlog_point(url: str, backlog: int) -> dict[str, Any]:
    """kombu pgmq's own statements: ``pgmq.read`` of 4 followed by the ``pgmq.delete`` of
    each message the read before returned (kombu acks one message per statement), and
    ``pgmq.send``."""
    queue = "scale_backlog"
    broker = pgmq_url(url)
    _publish_one(broker, queue)  # kombu creates the queue (and its NOTIFY trigger)
    table = sql.Identifier("pgmq", f"q_{queue}")
    with psycopg.connect(url, autocommit=True) as conn:
        fill = _fill_table(conn, table, backlog)
        message = conn.execute(sql.SQL("SELECT message FROM {t} LIMIT 1").format(t=table)
                               ).fetchone()[0]
        reads, sends = [], []
        held: list[int] = []
        for _ in range(PROBES):
            t = time.perf_counter()
            for msg_id in held:
                conn.execute("SELECT pgmq.delete(%s, %s::bigint)", [queue, msg_id])
            held = [r[0] for r in conn.execute("SELECT msg_id FROM pgmq.read(%s, 60, 4)",
                                               [queue]).fetchall()]
            reads.append(time.perf_counter() - t)
            t = time.perf_counter()
            conn.execute("SELECT pgmq.send(%s, %s::jsonb)", [queue, json.dumps(message)])
            sends.append(time.perf_counter() - t)
        drain = _table_drain(conn, table, broker, queue, backlog)
    return backlog_result(fill, reads, sends, drain)


def _drain_rate(broker: str, queue: str, size: Any) -> float:
    """Tasks/s a ``prefork -c 2`` worker takes off ``queue`` (``drain_rate``)."""
    env = {"BENCH_BROKER": broker, "BENCH_BACKEND": BACKEND, "BENCH_QUEUE": queue,
           "BENCH_TRANSPORT_OPTIONS": json.dumps(transport_options(broker))}
    return drain_rate(size, worker_process("benchmarks.broker_app", queues=[queue], env=env,
                                           concurrency=2, pool="prefork", ready_timeout=120))


def drain_rate(size: Callable[[], int], worker: AbstractContextManager[Any],
               step: float = DRAIN_SECONDS) -> float:
    """Jobs/s that ``worker`` (a context manager that runs it) takes off a backlog, read
    from the backlog's ``size``: from its first delivery, over DRAIN_SECONDS or until the
    backlog is empty, the size read every ``step`` seconds (by default only at the end:
    counting a deep backlog is itself a load on the server)."""
    before = size()
    with worker:
        deadline = time.monotonic() + 60
        while size() >= before and time.monotonic() < deadline:
            time.sleep(0.05)
        start_size, t0 = size(), time.perf_counter()
        end_size = start_size
        while end_size and time.perf_counter() - t0 < DRAIN_SECONDS - step / 2:
            time.sleep(min(step, DRAIN_SECONDS - (time.perf_counter() - t0)))
            end_size = size()
        elapsed = time.perf_counter() - t0
    return (start_size - end_size) / elapsed


def backlog_shape(database_url: str) -> dict[str, dict[int, dict[str, Any]]]:
    from benchmarks import peer_curves  # it builds on this module (via bench_peers)

    out: dict[str, dict[int, dict[str, Any]]] = {"swf": {}, "Redis": {}, "kombu pgmq": {}}
    out.update({name: {} for name in peer_curves.PEERS})
    for backlog in BACKLOGS:
        for name in out:
            print(f"   backlog={backlog}: {name}", flush=True)
            try:
                if name in peer_curves.PEERS:
                    out[name][backlog] = peer_curves.backlog_point(name, database_url,
                                                                   max(backlog, 1))
                elif name == "swf":
                    with scratch_database(database_url, f"b{backlog}") as url:
                        out[name][backlog] = _swf_backlog_point(url, max(backlog, 1))
                elif name == "kombu pgmq":
                    with scratch_database(database_url, f"pb{backlog}") as url:
                        out[name][backlog] = _pgmq_backlog_point(url, max(backlog, 1))
                else:
                    out[name][backlog] = _redis_backlog_point(max(backlog, 1))
            except Exception as exc:  # noqa: BLE001 - a failed point is reported, not fatal
                out[name][backlog] = {"error": error_text(exc)}
            print(f"      {out[name][backlog]}", flush=True)
    return out


# -- idle listeners ------------------------------------------------------------------------


def listeners_shape(database_url: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    with scratch_database(database_url, "listen") as url:
        for count in LISTENERS:
            print(f"   listeners={count}", flush=True)
            sessions = [psycopg.connect(url, autocommit=True) for _ in range(count)]
            try:
                for i, conn in enumerate(sessions):
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"idle_{i}")))
                out[count] = _queues_point(db.broker_url(url), 1)
            finally:
                for conn in sessions:
                    conn.close()
            print(f"      {out[count]}", flush=True)
    return out


# -- report --------------------------------------------------------------------------------


def broker_cpu(point: dict[str, Any]) -> float:
    return sum(point["cpu"].get(role, 0.0) for role in BROKER_ROLES)


def total_cpu(point: dict[str, Any]) -> float:
    return sum(point["cpu"].values())


def _cell(point: dict[str, Any], fmt: str, key: Any) -> str:
    if "error" in point:
        return "failed"
    value = key(point) if callable(key) else point[key]
    return format(value, fmt)


def error_text(exc: BaseException) -> str:
    """A failed point's cell: the error's type, its first line and the last line of what
    it carries (a worker's log ends with why it stopped), on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    if len(lines) > 1:
        text += f" … {lines[-1]}"
    return text.replace("|", "/")[:240]


def latency_cell(point: dict[str, Any], key: str) -> str:
    """``point[key]`` in ms, with the number of round trips when the budget cut them short."""
    made = point.get("round_trips", ROUND_TRIPS)
    return f"{point[key]:.2f}" + (f" ({made} trips)" if made < ROUND_TRIPS else "")


def growth(points: dict[int, dict[str, Any]], key: Any) -> str:
    """The last point's value over the first's (points without the value are left out)."""
    if any("error" in p for p in points.values()):
        return "-"
    values = [key(p) if callable(key) else p[key] for p in points.values()]
    values = [v for v in values if v == v]
    if len(values) < 2 or not values[0]:
        return "-"
    return f"{values[-1] / values[0]:.2f}x"


def _queues_table(data: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    lines = ["| broker | queues | worker ready (s) | throughput (tasks/s) | broker CPU/task (ms) "
             "| all CPU/task (ms) | idle CPU (ms/s) | p50 (ms) | p95 (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, points in data.items():
        for count, p in points.items():
            if "error" in p:
                lines.append(f"| {name} | {count} | failed: {p['error']} | | | | | | |")
                continue
            idle = sum(p["idle"].get(role, 0.0) for role in BROKER_ROLES)
            lines.append(f"| {name} | {count} | {p['ready']:.1f} | {p['throughput']:.0f} "
                         f"| {broker_cpu(p):.2f} | {total_cpu(p):.2f} | {idle:.1f} "
                         f"| {latency_cell(p, 'p50')} | {latency_cell(p, 'p95')} |")
    lines += ["", "Growth from the first to the last point (the target: per-task cost at "
              "1,000 queues within 1.5x of 1 queue):", "",
              "| broker | broker CPU/task | p50 | p95 |", "|---|---:|---:|---:|"]
    for name, points in data.items():
        lines.append(f"| {name} | {growth(points, broker_cpu)} | {growth(points, 'p50')} "
                     f"| {growth(points, 'p95')} |")
    return lines


def _backlog_table(data: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    lines = ["| broker | backlog | fill (s) | read p50 (ms) | read p95 (ms) | publish p50 (ms) "
             "| publish p95 (ms) | drain (tasks/s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, points in data.items():
        for backlog, p in points.items():
            if "error" in p:
                lines.append(f"| {name} | {backlog:,} | failed: {p['error']} | | | | | |")
                continue
            lines.append(f"| {name} | {backlog:,} | {p['fill']:.1f} | {p['read_p50']:.3f} "
                         f"| {p['read_p95']:.3f} | {p['send_p50']:.3f} | {p['send_p95']:.3f} "
                         f"| {p['drain']:.0f} |".replace("| nan |", "| - |"))
    lines += ["", "Growth from the empty queue to the deepest:", "",
              "| broker | read p50 | publish p50 | drain rate |", "|---|---:|---:|---:|"]
    for name, points in data.items():
        lines.append(f"| {name} | {growth(points, 'read_p50')} | {growth(points, 'send_p50')} "
                     f"| {growth(points, 'drain')} |")
    return lines


def _listeners_table(data: dict[int, dict[str, Any]]) -> list[str]:
    lines = ["| idle LISTEN sessions | throughput (tasks/s) | broker CPU/task (ms) "
             "| all CPU/task (ms) | p50 (ms) | p95 (ms) |", "|---:|---:|---:|---:|---:|---:|"]
    for count, p in data.items():
        lines.append(f"| {count} | {_cell(p, '.0f', 'throughput')} "
                     f"| {_cell(p, '.2f', broker_cpu)} | {_cell(p, '.2f', total_cpu)} "
                     f"| {_cell(p, '.2f', 'p50')} | {_cell(p, '.2f', 'p95')} |")
    lines += ["", f"Growth 0 → {LISTENERS[-1]} listeners: broker CPU/task "
              f"{growth(data, broker_cpu)}, p50 {growth(data, 'p50')}, "
              f"p95 {growth(data, 'p95')}."]
    return lines


def _plot(queues: dict[str, dict[int, dict[str, Any]]],
          backlog: dict[str, dict[int, dict[str, Any]]]) -> str | None:
    """docs/img/scale-curves.png: the queue-count and backlog curves; None without
    matplotlib (the bench extra installs it)."""
    plt = plots.pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, points in queues.items():
        ok = {k: v for k, v in points.items() if "error" not in v}
        axes[0].plot(list(ok), [broker_cpu(v) for v in ok.values()], marker="o", label=name)
        axes[1].plot(list(ok), [v["p50"] for v in ok.values()], marker="o", label=f"{name} p50")
    axes[0].set(xscale="log", xlabel="queues consumed", ylabel="broker CPU per task (ms)",
                title="Per-task broker CPU vs queues")
    axes[1].set(xscale="log", yscale="log", xlabel="queues consumed",
                ylabel="round trip p50 (ms, log scale)",
                title="Round trip vs queues")
    for name, points in backlog.items():
        ok = {max(k, 1): v for k, v in points.items() if "error" not in v}
        axes[2].plot(list(ok), [v["read_p50"] for v in ok.values()], marker="o",
                     label=f"{name} read")
        axes[2].plot(list(ok), [v["send_p50"] for v in ok.values()], marker="s",
                     linestyle="--", label=f"{name} publish")
    axes[2].set(xscale="log", xlabel="messages already queued", ylabel="ms (p50)",
                title="Read and publish vs backlog")
    return plots.save(fig, "scale-curves.png", axes)


def run(database_url: str) -> str:
    global POSTMASTER
    POSTMASTER = postmaster_pid(database_url)
    queues = queues_shape(database_url)
    backlog = backlog_shape(database_url)
    listeners = listeners_shape(database_url)
    picture = _plot(queues, backlog)
    load = os.getloadavg()[0]
    loaded = (" (loaded by other work: absolute numbers are slow; compare within a shape)"
              if load > 1.5 else "")
    lines = [
        "## Cost curves (`bench_scale`)",
        "",
        "Command: `python -m benchmarks.run bench_scale` (part of `make bench`). No-op task, "
        "worker `--pool=prefork -c 2`, result backend Redis for every broker; each point on a "
        "fresh database (swf) or a flushed Redis db. \"broker CPU\" is the worker's main "
        "process plus the broker's server (PostgreSQL backends, redis-server, RabbitMQ); "
        "\"all CPU\" adds the client and the pool children. kombu pgmq is kombu's own `pgmq://` "
        "transport with `use_notify` on (its NOTIFY wake-ups), as `bench_broker` runs it. "
        "Procrastinate and PgQueuer run their simplest no-op `async` job (as `bench_peers` "
        "does, in `.venv-peers`), one worker process of concurrency 2 on the same server, "
        "with no result backend (their job's status stays in PostgreSQL): their \"broker "
        "CPU\" is that worker process, which also runs the jobs, plus PostgreSQL, where "
        "Celery's pool children are left out of it; their round trip is an enqueue, then "
        "the peer's documented wait for the job's end (Procrastinate: polling its status "
        "every 1 ms; PgQueuer: its `CompletionWatcher`). Their queues are Procrastinate's "
        "queue names and PgQueuer's entrypoints. "
        f"Load average (1 min) at the end: {load:.1f} on {os.cpu_count()} cores{loaded}.",
        "",
        f"### Queues consumed by one worker ({TASKS} tasks round-robin, collected within "
        f"{BATCH_BUDGET:.0f} s, then {ROUND_TRIPS} round trips on random queues, as many as "
        f"{ROUND_TRIP_BUDGET:.0f} s allow; idle CPU over 5 s before, from 5 s after the "
        "warm-up)",
        "",
        *_queues_table(queues),
        "",
        f"### Backlog already queued (one queue; {PROBES} reads of 4 with their acks, and "
        f"{PROBES} publishes, timed from a client; drain over {DRAIN_SECONDS:.0f} s)",
        "",
        *_backlog_table(backlog),
        "",
        "swf's read is the transport's own statement (`storage.sql` `read`: acks, then the "
        "oldest visible rows `FOR UPDATE SKIP LOCKED` through the queue's index), its publish "
        "the transport's `send` (asynchronous commit, as by default). Redis's are `BRPOP` and "
        "`LPUSH`, O(1) at any depth. kombu pgmq's read is `pgmq.read` of 4 after one "
        "`pgmq.delete` per message of the read before (kombu acks message by message), its "
        "publish `pgmq.send` (synchronous commit, the server's default). Procrastinate's "
        "read is its worker's `fetch_job` and `finish_job` (two statements per job), "
        "PgQueuer's its `dequeue` and `log_jobs`; their publish one enqueue, and their "
        "backlog is filled with each one's batch API, 1,000 jobs per call.",
        "",
        "### Idle LISTEN sessions on the database (swf; 1 queue)",
        "",
        *_listeners_table(listeners),
        "",
    ]
    if picture:
        lines += [f"![cost curves]({picture})", ""]
    return "\n".join(lines)
