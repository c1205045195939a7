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
systems alternate in rounds, the order reversed every other round, so that load from other
processes on the machine hits all of them alike. Throughput: one sender, and four sender
threads, sending back to back, in alternating rounds too; the rate is messages / (first
send -> last delivery). Each swf system is compared with its Redis analogue round by round;
the section reports the median of the per-round ratios with every round, and the machine's
load at its start and end.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks.stats import (
    LoadProbe,
    ratio_text,
    ratios,
    round_order,
    run_together,
    spread,
    summary_ms,
)

REDIS_URL = os.environ.get("SWF_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
ROUNDS = 6
PER_ROUND = 100
WARMUP = 30
THROUGHPUT_ROUNDS = 3
#: Messages per throughput measurement (one system, one sender count, one round).
THROUGHPUT_MESSAGES = 1000
#: Each swf system and the Redis system that does the same (stored or not).
ANALOGUES = {"swf send_with_notify (pgmq + NOTIFY)": "Redis MULTI XADD + PUBLISH",
             "swf notify_only (NOTIFY)": "Redis PUBLISH"}


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
        #: Delivery latencies in seconds, one list per round.
        self.rounds: list[list[float]] = []
        #: Messages per second by sender count, one value per round.
        self.rates: dict[int, list[float]] = {1: [], 4: []}

    def ping(self, i: int) -> float:
        """Send one message; the seconds until the listener's thread has it."""
        target = self.sink.count + 1
        start = time.perf_counter()
        self.send(i)
        self.sink.wait_for(target)
        return self.sink.last - start

    def latency_round(self) -> None:
        """One latency round of ``PER_ROUND`` messages."""
        self.rounds.append([self.ping(i) for i in range(PER_ROUND)])

    def per_round_ms(self, pct: str) -> list[float]:
        """The ``p50`` or ``p95`` latency of each round, in ms."""
        return [summary_ms(latencies)[pct] for latencies in self.rounds]


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


def _measure(systems: list[_System]) -> None:
    """Warm-up, then latency and throughput rounds, the systems' order reversed every other
    round."""
    for system in systems:
        for i in range(WARMUP):
            system.ping(i)
    for round_no in range(ROUNDS):
        for system in round_order(systems, round_no):
            system.latency_round()
    for round_no in range(THROUGHPUT_ROUNDS):
        for senders in (1, 4):
            for system in round_order(systems, round_no):
                system.rates[senders].append(_throughput(system, senders))


def _ratio_lines(systems: list[_System]) -> list[str]:
    """Each swf system against its Redis analogue: median of the per-round ratios."""
    by_name = {s.name: s for s in systems}
    lines = []
    for ours, theirs in ((by_name.get(a), by_name.get(b)) for a, b in ANALOGUES.items()):
        if ours is None or theirs is None:
            continue
        p50 = ratios(ours.per_round_ms("p50"), theirs.per_round_ms("p50"))
        lines.append(
            f"- {ours.name} / {theirs.name}: p50 latency {ratio_text(p50)}; msg/s with 1 "
            f"sender {ratio_text(ratios(ours.rates[1], theirs.rates[1]))}; with 4 senders "
            f"{ratio_text(ratios(ours.rates[4], theirs.rates[4]))}")
    if not lines:
        return []
    return ["", "Ratios to the Redis analogue (the median of the per-round ratios, every "
            "round shown; latency over the latency rounds, rates over the throughput rounds):",
            "", *lines]


def run(database_url: str) -> str:
    probe = LoadProbe()
    tag = f"{os.getpid()}"
    systems = _swf_systems(database_url, tag)
    try:
        systems += _redis_systems(tag)
        redis_note = ""
    except Exception as exc:  # noqa: BLE001 - report, do not fail the whole bench run
        redis_note = f"\nRedis not measured: {type(exc).__name__}: {exc}\n"
    try:
        _measure(systems)
        floor = _round_trips(database_url)
    finally:
        for system in systems:
            system.close()
        _drop_stored(database_url, f"bench_swn_{tag}")

    lines = [
        "## Messaging: NOTIFY delivery vs Redis pub/sub",
        "",
        f"Latency: {ROUNDS} rounds x {PER_ROUND} messages per system, one at a time, the "
        "systems' order reversed every other round, measured from just before the send call "
        "until the listener thread has the notification (after "
        f"{WARMUP} warm-up messages). Throughput: {THROUGHPUT_ROUNDS} rounds of "
        f"{THROUGHPUT_MESSAGES} messages sent back to back by 1 or 4 threads of one process, "
        "counted until the last one is delivered, the order reversed every other round. "
        "Small JSON bodies (~45 bytes). Each figure is the median of the rounds (the p50 and "
        "p95 of each latency round), with their range in brackets. All systems measured in "
        "the same run; absolute numbers are noisy and the ratios are what to read.",
        "",
        probe.note(),
        "",
        "| system | stored | p50 latency (ms) | p95 latency (ms) | msg/s, 1 sender "
        "| msg/s, 4 senders |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in systems:
        stored = "yes" if ("pgmq" in s.name or "XADD" in s.name) else "no"
        lines.append(f"| {s.name} | {stored} | {spread(s.per_round_ms('p50'), '.3f')} | "
                     f"{spread(s.per_round_ms('p95'), '.3f')} | "
                     f"{spread(s.rates[1], ',.0f')} | {spread(s.rates[4], ',.0f')} |")
    lines += _ratio_lines(systems)
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
