"""Messaging: NOTIFY delivery latency and throughput against Redis pub/sub.

Four ways of telling a listener about a message, measured in one process on one machine:

- ``send_with_notify``: message row in the channel's pgmq queue + NOTIFY, one transaction
  (durable: the message survives a listener that is away);
- ``notify_only``: a bare NOTIFY (nothing stored);
- Redis ``PUBLISH`` (nothing stored);
- Redis ``MULTI XADD + PUBLISH`` (stored in a stream, the closest Redis analogue of
  send_with_notify).

Latency: one message at a time, from just before the send call to the moment the
listener's thread has it (so it includes the sender's round trip and COMMIT). The four
systems alternate in rounds so that load from other processes on the machine hits all of
them alike. Throughput: one sender, and four sender threads, sending back to back; the
rate is messages / (first send -> last delivery).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks.stats import run_together, summary_ms

REDIS_URL = os.environ.get("SWF_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
ROUNDS = 6
PER_ROUND = 100
WARMUP = 30
THROUGHPUT_MESSAGES = 3000


class _Sink:
    """Counts deliveries and timestamps them in the listener's thread."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.count = 0
        self.last = 0.0

    def hit(self, *_: Any) -> None:
        now = time.perf_counter()
        with self.cond:
            self.count += 1
            self.last = now
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.count >= count, timeout):
                raise TimeoutError(f"only {self.count} of {count} deliveries arrived")


class _System:
    def __init__(self, name: str, send: Callable[[int], Any], sink: _Sink,
                 close: Callable[[], None]) -> None:
        self.name, self.send, self.sink, self.close = name, send, sink, close
        self.latencies: list[float] = []

    def ping(self, i: int) -> None:
        target = self.sink.count + 1
        start = time.perf_counter()
        self.send(i)
        self.sink.wait_for(target)
        self.latencies.append(self.sink.last - start)


def _swf_systems(url: str, tag: str) -> list[_System]:
    import swf_celery

    systems = []
    for name, channel, send in (
        ("swf send_with_notify (pgmq + NOTIFY)", f"bench_swn_{tag}",
         lambda ch: lambda i: swf_celery.send_with_notify(ch, {"i": i, "body": "x" * 32}, url)),
        ("swf notify_only (NOTIFY)", f"bench_notify_{tag}",
         lambda ch: lambda i: swf_celery.notify_only(ch, f'{{"i":{i},"body":"{"x" * 32}"}}', url)),
    ):
        sink = _Sink()
        listener = swf_celery.listen(channel, url, callback=sink.hit)
        systems.append(_System(name, send(channel), sink, listener.close))
    return systems


def _redis_systems(tag: str) -> list[_System]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    systems = []
    for name, channel, stored in (("Redis PUBLISH", f"swfbench:{tag}:pub", False),
                                  ("Redis MULTI XADD + PUBLISH", f"swfbench:{tag}:xadd", True)):
        sink = _Sink()
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(**{channel: sink.hit})
        thread = pubsub.run_in_thread(sleep_time=0.5, daemon=True)

        def send(i: int, channel: str = channel, stored: bool = stored) -> None:
            body = f'{{"i":{i},"body":"{"x" * 32}"}}'
            if stored:
                pipe = client.pipeline(transaction=True)
                pipe.xadd(channel + ":stream", {"m": body})
                pipe.publish(channel, body)
                pipe.execute()
            else:
                client.publish(channel, body)

        def close(thread: Any = thread, pubsub: Any = pubsub, channel: str = channel) -> None:
            thread.stop()
            thread.join(5)
            pubsub.close()
            client.delete(channel + ":stream")

        # Subscriptions are asynchronous: wait until this one is live.
        while client.pubsub_numsub(channel)[0][1] < 1:
            time.sleep(0.01)
        systems.append(_System(name, send, sink, close))
    return systems


def _throughput(system: _System, senders: int) -> float:
    per = THROUGHPUT_MESSAGES // senders
    target = system.sink.count + per * senders

    def blast(barrier: threading.Barrier) -> None:
        barrier.wait()
        for i in range(per):
            system.send(i)

    start = run_together(blast, senders)
    system.sink.wait_for(target, timeout=120)
    return per * senders / (system.sink.last - start)


def _round_trips(url: str, n: int = 300) -> dict[str, float]:
    """p50 of the pieces a send is made of, for the notes under the table."""
    import psycopg

    out = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS swf_bench_rows (v jsonb)")
        try:
            for label, stmt in (("select", "SELECT 1"),
                                ("insert", "INSERT INTO swf_bench_rows VALUES ('{\"i\":1}')")):
                times = []
                for _ in range(n):
                    start = time.perf_counter()
                    conn.execute(stmt)
                    times.append(time.perf_counter() - start)
                out[label] = summary_ms(times)["p50"]
        finally:
            conn.execute("DROP TABLE swf_bench_rows")
    return out


def _drop_stored(url: str, channel: str) -> None:
    from swf_celery import acknowledge, read_pending

    while batch := read_pending(channel, url, limit=1000):
        acknowledge(channel, [m.id for m in batch], url, archive=False)


def run(database_url: str) -> str:
    tag = f"{os.getpid()}"
    systems = _swf_systems(database_url, tag)
    try:
        systems += _redis_systems(tag)
        redis_note = ""
    except Exception as exc:  # noqa: BLE001 - report, do not fail the whole bench run
        redis_note = f"\nRedis not measured: {type(exc).__name__}: {exc}\n"
    try:
        for system in systems:
            for i in range(WARMUP):
                system.ping(i)
            system.latencies.clear()
        for _ in range(ROUNDS):
            for system in systems:
                for i in range(PER_ROUND):
                    system.ping(i)
        rates = {(s.name, n): 0.0 for s in systems for n in (1, 4)}
        for senders in (1, 4):
            for system in systems:
                rates[(system.name, senders)] = _throughput(system, senders)
        floor = _round_trips(database_url)
    finally:
        for system in systems:
            system.close()
        _drop_stored(database_url, f"bench_swn_{tag}")

    lines = [
        "## Messaging: NOTIFY delivery vs Redis pub/sub",
        "",
        f"Latency: {ROUNDS} alternating rounds x {PER_ROUND} messages per system, one at a "
        "time, measured from just before the send call until the listener thread has the "
        f"notification (after {WARMUP} warm-up messages). Throughput: "
        f"{THROUGHPUT_MESSAGES} messages sent back to back by 1 or 4 threads of one process, "
        "counted until the last one is delivered. Small JSON bodies (~45 bytes). All systems "
        "measured in the same run; other processes shared the 2 cores, so absolute numbers "
        "are noisy and the ratios are what to read.",
        "",
        "| system | stored | p50 latency (ms) | p95 latency (ms) | msg/s, 1 sender "
        "| msg/s, 4 senders |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in systems:
        stats = summary_ms(s.latencies)
        stored = "yes" if ("pgmq" in s.name or "XADD" in s.name) else "no"
        lines.append(f"| {s.name} | {stored} | {stats['p50']:.3f} | {stats['p95']:.3f} | "
                     f"{rates[(s.name, 1)]:,.0f} | {rates[(s.name, 4)]:,.0f} |")
    lines += [
        "",
        "Reading it: each `send_with_notify` is a full transaction (pgmq insert + NOTIFY + "
        "COMMIT with its WAL flush) on a pooled connection, and `notify_only` is a "
        "transaction too, because Postgres delivers a NOTIFY only at COMMIT. Redis pub/sub "
        "is an in-memory fan-out with no transaction and no durability, so it is the floor "
        "for this kind of delivery; `MULTI XADD + PUBLISH` is the Redis way to also keep the "
        "message. What the Postgres numbers buy: the message and its notification commit "
        "together with the caller's other writes, survive a restart, and listeners that "
        "missed notifications re-read the channel's pending messages.",
        "",
        f"Where the time goes (p50 in this run, psycopg without the library): a `SELECT 1` "
        f"round trip takes {floor['select']:.3f} ms and an autocommit one-row INSERT (so "
        f"including its WAL flush at COMMIT) {floor['insert']:.3f} ms. `send_with_notify` "
        "is one such INSERT with the NOTIFY in the same statement, plus waking the "
        "listener's backend and thread and the Python on both ends; `notify_only` needs no "
        "WAL flush. With 2 cores shared by the senders, the listener thread and the server, "
        "more sender threads mostly queue for the same cores and the same WAL flush.",
    ]
    return "\n".join(lines) + "\n" + redis_note
