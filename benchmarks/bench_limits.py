"""Flow control, idempotent publish and enqueue in the caller's transaction (issue 30).

Real ``celery worker`` processes on one database (``benchmarks.limits_app``), each scenario
on its own queue:

- rate: 4 worker processes, key ``api:limited`` at 50/s and key ``api:free`` (no limit) in
  the same queue; the delivered rate of each over a minute, and ``api:free`` alone;
- concurrency: key ``tenant:capped`` limited to 3, 4 workers of concurrency 4, one SIGKILLed
  midway; the most running at once (from recorded starts and ends; a killed task counts as
  running until its visibility timeout ends) and when its slot came back;
- fairness: one key with 10,000 queued, ten keys with 10 each;
- idempotent publish: 1,000 publishes of 100 keys from 8 processes at once;
- transaction: 1,000 enqueues in rolled-back transactions, 1,000 in committed ones;
- cost: statements per task (unchanged: the read is one statement either way) and the time
  of one read, plain and limited, in alternating rounds of the same run.

Each scenario runs once; the section records the machine's load at its start and end.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

import swf_celery as swf
from benchmarks.stats import LoadProbe, percentile, ratio_text, ratios, round_order, spread
from swf_celery.db import broker_url, normalize_dsn
from tests.helpers import worker_process

APP = "benchmarks.limits_app"
RATE_SECONDS = 60
VT = 5.0


def _sql(url: str, query: str, params: Any = None) -> list[Any]:
    with psycopg.connect(normalize_dsn(url), autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def _workers(url: str, queue: str, n: int, concurrency: int,
             poll: float = 0.2) -> Iterator[list[Any]]:
    env = {"SWF_BENCH_BROKER": broker_url(url), "SWF_BENCH_VT": str(VT),
           "SWF_BENCH_POLL": str(poll)}
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(worker_process(APP, queues=[queue], env=env,
                                                    concurrency=concurrency,
                                                    hostname=f"{queue}{i}@%h"))
                 for i in range(n)]
        yield procs


def _app(url: str) -> Any:
    os.environ["SWF_BENCH_BROKER"] = broker_url(url)
    from benchmarks import limits_app

    limits_app.app.conf.broker_url = broker_url(url)
    return limits_app.app


def _done_at(url: str, prefix: str) -> list[float]:
    return [r[0] for r in _sql(url, "SELECT extract(epoch FROM at) FROM bench_limit_runs "
                                    "WHERE phase = 'done' AND tag LIKE %s ORDER BY at",
                               (prefix + "%",))]


def _wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark scenario did not finish")
        time.sleep(0.5)


def _rate_between(times: list[float], start: float, end: float) -> float:
    return sum(1 for t in times if start <= t < end) / (end - start)


def rate(url: str) -> dict[str, float]:
    app, queue = _app(url), "bl_rate"
    hit = app.tasks["bl.hit"]
    with _workers(url, queue, 4, 2):
        # The unlimited key alone first (the same queue, so the same limited read).
        for i in range(4000):
            hit.apply_async([f"alone-{i}"], queue=queue, headers={"swf_key": "api:free"})
        _wait(lambda: len(_done_at(url, "alone-")) >= 4000, 300)
        alone = _done_at(url, "alone-")
        limited_n = 50 * (RATE_SECONDS + 10)
        for i in range(limited_n):
            hit.apply_async([f"lim-{i}"], queue=queue, headers={"swf_key": "api:limited"})
        for i in range(60 * 150):
            hit.apply_async([f"free-{i}"], queue=queue, headers={"swf_key": "api:free"})
        _wait(lambda: len(_done_at(url, "lim-")) >= limited_n, RATE_SECONDS + 120)
    lim, free = _done_at(url, "lim-"), _done_at(url, "free-")
    start = lim[0] + 2  # past the first burst
    window = (start, start + RATE_SECONDS)
    steady = (alone[len(alone) // 10], alone[-len(alone) // 10])  # past start-up and tail
    after = [t for t in free if t > lim[-1]]
    return {"limited_rate": _rate_between(lim, *window),
            "free_rate": _rate_between(free, *window) if free[-1] > window[1] else
            len(free) / (free[-1] - free[0]),
            "alone_rate": _rate_between(alone, *steady),
            "after_rate": (len(after) / (after[-1] - after[0])) if len(after) > 100
            else float("nan")}


def _worker_running_a_task(url: str, procs: list[Any]) -> Any:
    """The worker whose pool process runs a task now (its start has no end yet)."""
    for _ in range(100):
        pids = [r[0] for r in _sql(url, "SELECT s.pid FROM bench_limit_runs s WHERE s.phase "
                                        "= 'start' AND NOT EXISTS (SELECT 1 FROM "
                                        "bench_limit_runs d WHERE d.tag = s.tag AND d.phase "
                                        "= 'done')")]
        for pid in pids:
            with contextlib.suppress(OSError):
                ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
                for proc in procs:
                    if proc.pid in (pid, ppid):
                        return proc
        time.sleep(0.05)
    return procs[0]


class _HeldSampler:
    """Samples, every 20 ms, how many deliveries of a key are held (read, not acked, their
    visibility timeout not over): the count the concurrency limit bounds."""

    def __init__(self, url: str, queue: str, key: str) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._args = (url, queue, key)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        url, queue, key = self._args
        with psycopg.connect(normalize_dsn(url), autocommit=True) as conn:
            table = conn.execute("SELECT 'pgmq.q_' || pgmq_name FROM swf.queues WHERE name = %s",
                                 [queue]).fetchone()[0]  # type: ignore[index]
            query = (f"SELECT count(*) FROM {table} WHERE headers #>> '{{flow,key}}' = %s "
                     "AND read_ct > 0 AND vt > clock_timestamp()")
            while not self._stop.is_set():
                row = conn.execute(query, [key]).fetchone()  # type: ignore[call-overload]
                self.peak = max(self.peak, int(row[0]) if row else 0)
                time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def concurrency(url: str) -> dict[str, float]:
    app, queue = _app(url), "bl_conc"
    task = app.tasks["bl.hold"]
    for i in range(60):
        task.apply_async([f"cap-{i}", 0.5], queue=queue, headers={"swf_key": "tenant:capped"})
    sampler = _HeldSampler(url, queue, "tenant:capped")
    with _workers(url, queue, 4, 4) as procs:
        time.sleep(4)
        victim = _worker_running_a_task(url, procs)
        os.killpg(victim.pid, signal.SIGKILL)
        killed_at = time.time()
        _wait(lambda: len(_done_at(url, "cap-")) >= 60, 180)
    held_peak = sampler.stop()
    rows = _sql(url, "SELECT tag, phase, extract(epoch FROM at), pid FROM bench_limit_runs "
                     "WHERE tag LIKE 'cap-%' ORDER BY at")
    per_tag: dict[str, dict[str, list[float]]] = {}
    for tag, phase, at, _pid in rows:
        per_tag.setdefault(tag, {"start": [], "done": []})[phase].append(float(at))
    events: list[tuple[float, int]] = []
    orphans = 0
    for times in per_tag.values():
        starts = sorted(times["start"])
        if times["done"]:  # the last start is the delivery that finished
            events += [(starts[-1], 1), (max(times["done"]), -1)]
            starts = starts[:-1]
        for at in starts:  # killed: it stopped running with its process
            orphans += 1
            events += [(at, 1), (killed_at, -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    after_kill = sorted(at for t in per_tag.values() for at in t["start"] if at > killed_at)
    return {"peak": peak, "held_peak": held_peak, "orphans": orphans,
            "slots_back_after": (after_kill[0] - killed_at) if after_kill else float("nan"),
            "tasks_run": sum(1 for t in per_tag.values() if t["done"])}


def fairness(url: str) -> dict[str, float]:
    app, queue = _app(url), "bl_fair"
    hit = app.tasks["bl.hit"]
    for i in range(10000):
        hit.apply_async([f"big-{i}"], queue=queue, headers={"swf_key": "tenant:big"})
    for k in range(10):
        for i in range(10):
            hit.apply_async([f"small{k}-{i}"], queue=queue,
                            headers={"swf_key": f"tenant:small{k}"})
    with _workers(url, queue, 4, 2):
        _wait(lambda: len(_done_at(url, "big-")) >= 10000, 600)
    big, small = _done_at(url, "big-"), _done_at(url, "small")
    first = min(big[0], small[0])
    return {"small_done_s": small[-1] - first, "big_done_s": big[-1] - first,
            "big_before_small": sum(1 for t in big if t <= small[-1])}


def _publish_some(url: str, n: int, proc: int, barrier: Any) -> None:
    app = _app(url)
    hit = app.tasks["bl.hit"]
    barrier.wait()
    for i in range(n):
        hit.apply_async([f"idem-{proc}-{i}"], queue="bl_idem",
                        headers={"idempotency_key": f"key-{i % 100}"})


def idempotent(url: str) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_publish_some, args=(url, 125, p, barrier)) for p in range(8)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - started
    with _workers(url, "bl_idem", 2, 2):
        time.sleep(3)
        _wait(lambda: _sql(url, "SELECT swf.queue_size('bl_idem')")[0][0] == 0, 60)
        time.sleep(1)
    return {"runs": len(_done_at(url, "idem-")), "seconds": elapsed}


def transactions(url: str) -> dict[str, float]:
    app = _app(url)
    hit = app.tasks["bl.hit"]
    with psycopg.connect(normalize_dsn(url)) as conn:
        for i in range(2000):
            with swf.transaction(conn):
                hit.apply_async([f"tx{'c' if i % 2 else 'r'}-{i}"], queue="bl_tx")
            conn.commit() if i % 2 else conn.rollback()
    with _workers(url, "bl_tx", 2, 2):
        _wait(lambda: len(_done_at(url, "txc-")) >= 1000, 120)
        time.sleep(2)
    return {"committed_ran": len(_done_at(url, "txc-")),
            "rolled_back_ran": len(_done_at(url, "txr-"))}


def _transactions(url: str) -> int:
    return int(_sql(url, "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                         "WHERE datname = current_database()")[0][0])


def statements_per_task(url: str, n: int = 2000) -> dict[str, float]:
    """Transactions (autocommit: statements) the consuming side runs per task, from
    pg_stat_database: a worker (2 processes) already waiting, n tasks published, until the
    queue is empty; publishes (one each) and this function's own polls subtracted."""
    app = _app(url)
    noop = app.tasks["bl.noop"]
    out: dict[str, float] = {}
    for label, queue, key in (("plain", "bl_stmt_plain", None),
                              ("keyed", "bl_stmt_keyed", "api:free"),
                              ("rate", "bl_stmt_rate", "api:fast")):
        headers = {"swf_key": key} if key else {}
        noop.apply_async(queue=queue, headers=headers)  # the queue, its mark, a first run
        with _workers(url, queue, 1, 2, poll=30.0):
            _wait(lambda q=queue: _sql(url, "SELECT swf.queue_size(%s)", [q])[0][0] == 0, 60)
            time.sleep(3)
            before = _transactions(url)
            for _ in range(n):
                noop.apply_async(queue=queue, headers=headers)
            polls = 0
            while _sql(url, "SELECT swf.queue_size(%s)", [queue])[0][0] > 0:
                polls += 1
                time.sleep(1)
            time.sleep(3)  # acks written, statistics flushed
            after = _transactions(url)
        out[label] = (after - before - n - polls - 2) / n
    return out


#: Alternating rounds of the read cost, and reads of each queue per round.
COST_ROUNDS, COST_READS = 3, 334


def read_cost(url: str) -> dict[str, list[float]]:
    """ms per read of one message (qty 1), plain and limited, same table size and run: the
    median read of each round, the two queues' order reversed every other round."""
    from swf_celery.transport.storage import QueueStorage

    message = {"body": "e30=", "content-type": "application/json", "properties": {},
               "headers": {"id": "x"}}
    out: dict[str, list[float]] = {"plain": [], "limited": []}
    with psycopg.connect(normalize_dsn(url), autocommit=True) as conn:
        reads = {}
        for queue, flow in (("bl_cost_plain", None), ("bl_cost_keyed", "k")):
            msg = dict(message, headers={"id": "x", **({"swf_flow": {"key": flow}}
                                                        if flow else {})})
            conn.execute("SELECT swf.queue_send(%s, %s) FROM generate_series(1, 5000)",
                         [queue, Jsonb(msg)])
            name, storage = conn.execute("SELECT pgmq_name, storage FROM swf.queues "
                                         "WHERE name = %s", [queue]).fetchone()
            reads[queue] = QueueStorage(queue, name, storage).statement("read")
        for round_no in range(COST_ROUNDS):
            for queue in round_order(list(reads), round_no):
                times = []
                for _ in range(COST_READS):
                    t0 = time.perf_counter()
                    if queue == "bl_cost_keyed":
                        conn.execute("SELECT * FROM swf.queue_read_limited(%s, 1, 60)",
                                     [queue])
                    else:
                        conn.execute(reads[queue], {"queue": queue, "qty": 1, "vt": 60,
                                                    "acks": [], "receipts": []}).fetchall()
                    times.append(time.perf_counter() - t0)
                label = "limited" if queue == "bl_cost_keyed" else "plain"
                out[label].append(percentile(times, 50) * 1000)
    return out


def run(database_url: str) -> str:
    probe = LoadProbe()
    _sql(database_url, "DROP TABLE IF EXISTS bench_limit_runs")
    _sql(database_url, "CREATE TABLE bench_limit_runs (id bigserial PRIMARY KEY, tag text, "
                       "phase text, pid integer, at timestamptz DEFAULT clock_timestamp())")
    for q in ("bl_rate", "bl_conc", "bl_fair", "bl_idem", "bl_tx", "bl_cost_plain",
              "bl_cost_keyed"):
        _sql(database_url, "SELECT swf.queue_drop(%s)", [q])
    _sql(database_url, "DELETE FROM swf.idempotency_keys")
    _sql(database_url, "DELETE FROM swf.flow_keys")
    cost = read_cost(database_url)
    stmts = statements_per_task(database_url)
    tx = transactions(database_url)
    idem = idempotent(database_url)
    conc = concurrency(database_url)
    fair = fairness(database_url)
    rt = rate(database_url)
    return f"""## Flow control, idempotent publish, transactions (`bench_limits`)

Real `celery worker` processes (prefork) on the embedded PostgreSQL, one queue per scenario.
Each scenario runs once; the one comparison, the read cost plain against limited, runs in \
{COST_ROUNDS} rounds of {COST_READS} reads of each queue, their order reversed every other \
round.

{probe.note()}

| measured | result |
|---|---|
| rate: key at 50/s, 4 workers x 2, over {RATE_SECONDS} s | {rt['limited_rate']:.1f} tasks/s \
({(rt['limited_rate'] / 50 - 1) * 100:+.1f}% of 50) |
| rate: unlimited key in the same queue meanwhile | {rt['free_rate']:.0f} tasks/s, with \
the limited key's {rt['limited_rate']:.0f}: {rt['free_rate'] + rt['limited_rate']:.0f} \
tasks/s in all (the unlimited key alone: {rt['alone_rate']:.0f} tasks/s before, \
{rt['after_rate']:.0f} tasks/s after) |
| concurrency key at 3, 4 workers x 4, one SIGKILLed after 4 s | at most {conc['peak']} \
running at once (recorded starts and ends), at most {conc['held_peak']} deliveries held \
(sampled every 20 ms); {conc['orphans']} task(s) killed mid-run; the first start after the \
kill {conc['slots_back_after']:.1f} s later (their visibility timeout, {VT:.0f} s, extended \
every {VT / 3:.1f} s, ended: the slots came back); all {conc['tasks_run']} ran |
| fairness: 10,000 on one key, 10 keys x 10 | the 100 small-key tasks done after \
{fair['small_done_s']:.1f} s (the backlog after {fair['big_done_s']:.1f} s; \
{fair['big_before_small']} backlog tasks ran before the last small one) |
| idempotent publish: 1,000 from 8 processes, 100 keys | {idem['runs']} tasks ran \
(publishing took {idem['seconds']:.1f} s with process start-up) |
| transaction: 1,000 rolled back, 1,000 committed | {tx['rolled_back_ran']} and \
{tx['committed_ran']} ran |
| cost: one read (qty 1) of a 5,000-message queue, the median read of each round, \
median of the rounds (range) | plain {spread(cost['plain'], '.3f')} ms, limited \
{spread(cost['limited'], '.3f')} ms; limited / plain \
{ratio_text(ratios(cost['limited'], cost['plain']))} |

Statements per task on the consuming side (pg_stat_database transactions, all autocommit,
2,000 no-op tasks, one worker of 2 processes, prefetch 1; publishes subtracted): queue without
limits {stmts['plain']:.2f}, key without limits {stmts['keyed']:.2f}, key with a rate limit
{stmts['rate']:.2f}. A queue without limits runs the same statements as before this change
(one INSERT per publish, one read per batch with its acks folded in); its read only skips
keyed messages with one more condition, and its publish reads one more header path. A
limited queue's read is one statement too (`swf.queue_read_limited`), costing the difference
above per read; a worker process re-reads which of its queues are limited once every 2 s.
"""
