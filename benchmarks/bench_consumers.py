"""The producer's cost as idle consumers grow: 1 to 32 consumers asleep on one queue.

Each consumer is a LISTEN session asleep on the queue as a worker's event loop is; a client
publishes messages one after the other through the ``swf://`` transport and nobody reads
them, so what is measured is the publish with its wake-up: the commit's trigger, the
NOTIFYs, and the consumers' answers. Three ways of waiting, each point on a fresh queue:

- **hand-over** (the default): each message is claimed for the sleeper first in line and
  sent in its NOTIFY (``swf.queue_sleep`` with a claim);
- **wake one**: the sleeper first in line is woken to read (``hand_over=False``);
- **mark, every listener** (the synchronous loop, ``swf.queue_arm``): a message NOTIFYs
  every consumer that marked the queue, and each marks it again at once, as a consumer that
  found nothing to read does; this is how every idle worker waited before one consumer was
  woken per message.

Rounds alternate the order of the three; each figure is the median of the rounds.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import psycopg
from kombu import Connection

import swf_celery  # noqa: F401 - registers swf://
from benchmarks import plots
from benchmarks.bench_scale import scratch_database
from benchmarks.stats import LoadProbe, per_round, round_order, spread
from swf_celery import db

CONSUMERS = (1, 2, 4, 8, 16, 32)
MESSAGES = int(os.environ.get("BENCH_CONSUMERS_MESSAGES", "300"))
ROUNDS = int(os.environ.get("BENCH_CONSUMERS_ROUNDS", "3"))
QUEUE = "bench_consumers"
MODES = ("hand-over", "wake one", "mark, every listener")
#: How to read the table (what the curves come from).
READING = (
    "Reading it: waking one consumer per message keeps the publish nearly flat, where the "
    "herd (each idle consumer woken by every message, marking the queue again) grows with "
    "every consumer. What still grows with one consumer woken is PostgreSQL's own: a NOTIFY "
    "signals every backend that LISTENs in the database, whatever its channel, and each "
    "reads the notification queue (see \"Idle LISTEN sessions\" under `bench_scale`). The "
    "hand-over adds the claim and the message copied into the NOTIFY to each publish, paid "
    "instead of the consumer's read.")


class _Consumer:
    """One idle consumer: a LISTEN session, asleep on the queue or marking it."""

    def __init__(self, url: str, n: int, mode: str, pgmq: str) -> None:
        self.url = url
        self.mode = mode
        self.channel = f"swfw_{n:016x}"
        self.listen = psycopg.connect(url, autocommit=True)
        self.listen.execute(f'LISTEN "{self.channel}"')
        self.listen.execute(f'LISTEN "swfq_{pgmq}"')
        self.conn = psycopg.connect(url, autocommit=True)
        self.woken = 0
        self.statements = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.wait()
        self._thread.start()

    def wait(self) -> None:
        if self.mode == "mark, every listener":
            self.conn.execute("SELECT swf.queue_arm(%s)", ([QUEUE],))
        else:
            claim = 60_000 if self.mode == "hand-over" else None
            self.conn.execute("SELECT swf.queue_sleep(%s, %s, %s, %s)",
                              ([QUEUE], self.channel, self.listen.info.backend_pid, claim))
        self.statements += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in self.listen.notifies(timeout=0.2, stop_after=1):
                self.woken += 1
                if self.mode == "mark, every listener":
                    self.wait()  # nothing for it to read: it marks the queue again

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listen.close()
        self.conn.close()


def _point(url: str, count: int, mode: str) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as admin:
        pgmq = admin.execute("SELECT pgmq_name FROM swf.queue_ensure(%s)", (QUEUE,)).fetchone()
        admin.execute("SELECT swf.queue_purge(%s)", (QUEUE,))
        admin.execute("DELETE FROM swf.queue_sleepers")
    assert pgmq is not None
    consumers = [_Consumer(url, n + 1, mode, str(pgmq[0])) for n in range(count)]
    try:
        with Connection(db.broker_url(url)) as conn:
            producer = conn.Producer(serializer="json")
            producer.publish({"warm": True}, routing_key=QUEUE)
            times = []
            for i in range(MESSAGES):
                start = time.perf_counter()
                producer.publish({"n": i}, routing_key=QUEUE)
                times.append(time.perf_counter() - start)
        time.sleep(0.5)  # the last NOTIFYs arrive
    finally:
        for consumer in consumers:
            consumer.close()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT swf.queue_purge(%s)", (QUEUE,))
        admin.execute("DELETE FROM swf.queue_sleepers")
    return {"publish_ms": statistics.median(times) * 1000,
            "mean_ms": statistics.fmean(times) * 1000,
            "woken": sum(c.woken for c in consumers) / MESSAGES,
            "statements": sum(c.statements - 1 for c in consumers) / MESSAGES}


def _measure(url: str) -> dict[str, dict[int, list[dict[str, float]]]]:
    out: dict[str, dict[int, list[dict[str, float]]]] = {m: {c: [] for c in CONSUMERS}
                                                         for m in MODES}
    for round_no in range(ROUNDS):
        for count in CONSUMERS:
            for mode in round_order(MODES, round_no):
                out[mode][count].append(_point(url, count, mode))
                print(f"   round {round_no + 1}, {count} consumers, {mode}: "
                      f"{out[mode][count][-1]}", flush=True)
    return out


def _figure(points: list[dict[str, float]], key: str) -> list[float]:
    return [p[key] for p in points]


def _plot(data: dict[str, dict[int, list[dict[str, float]]]]) -> str | None:
    """docs/img/consumers-curve.png; None without matplotlib (the bench extra)."""
    plt = plots.pyplot()
    if plt is None:
        return None
    fig, axis = plt.subplots(figsize=(6.5, 4.2))
    for mode, points in data.items():
        axis.plot(list(points), [statistics.median(_figure(p, "mean_ms"))
                                 for p in points.values()], marker="o", label=mode)
    axis.set(xscale="log", xlabel="idle consumers on the queue",
             ylabel="publish, mean ms (client)", title="Publish cost vs idle consumers")
    axis.set_xticks(list(CONSUMERS), [str(c) for c in CONSUMERS])
    return plots.save(fig, "consumers-curve.png", [axis])


def _cell(points: list[dict[str, float]], key: str, spec: str) -> str:
    return spread(_figure(points, key), spec)


def run(database_url: str) -> str:
    """The section of docs/benchmarks.md."""
    probe = LoadProbe()
    with scratch_database(database_url, "consumers") as url:
        data = _measure(url)
    picture = _plot(data)
    lines = [
        "## Idle consumers on one queue (`bench_consumers`)",
        "",
        f"Command: `python -m benchmarks.run bench_consumers` (part of `make bench`). "
        f"{MESSAGES} messages published one after the other through `swf://` while 1 to 32 "
        "consumers wait on the queue; nobody reads. The three ways of waiting are described "
        f"in `benchmarks/bench_consumers.py`. {ROUNDS} rounds, the modes' order alternating; "
        "median (range) of the rounds. \"Statements\" are the consumers' own statements per "
        "message (marking the queue again).",
        "",
        probe.note(),
        "",
        "| consumers | mode | publish p50 (ms) | publish mean (ms) | wake-ups per message "
        "| consumers' statements per message |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for count in CONSUMERS:
        for mode in MODES:
            points = data[mode][count]
            lines.append(f"| {count} | {mode} | {_cell(points, 'publish_ms', '.3f')} "
                         f"| {_cell(points, 'mean_ms', '.3f')} | {_cell(points, 'woken', '.2f')} "
                         f"| {_cell(points, 'statements', '.2f')} |")
    first, last = CONSUMERS[0], CONSUMERS[-1]
    lines += ["", f"Publish mean, {first} -> {last} consumers:"]
    for mode in MODES:
        low = statistics.median(_figure(data[mode][first], "mean_ms"))
        high = statistics.median(_figure(data[mode][last], "mean_ms"))
        rounds = per_round([b / a for a, b in zip(_figure(data[mode][first], "mean_ms"),
                                                  _figure(data[mode][last], "mean_ms"),
                                                  strict=True)], ".2f", "x")
        lines.append(f"- {mode}: {low:.3f} -> {high:.3f} ms ({high / low:.2f}x; rounds "
                     f"{rounds})")
    lines += ["", READING]
    if picture:
        lines += ["", f"![publish cost vs idle consumers]({picture})"]
    return "\n".join(lines) + "\n"
