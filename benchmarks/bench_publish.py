"""Publishing a 1,000-task group: swf:// against Redis, RabbitMQ and Celery's own floor.

``group(noop.s() for _ in range(1000)).apply_async()`` timed from the client, nothing
consuming (the queue is purged after each round). On ``swf://`` the group is stored in one
insert (swf_celery/group_publish.py); the row "one statement per task" publishes the same group
without the batch, as Celery does on every broker. ``memory://`` (kombu's in-process
transport) is the floor: Celery building and publishing the messages with no broker at all.
Rounds alternate the order of the systems; each figure is the median of the rounds with
their range.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

from celery import Celery, group
from celery.canvas import group as group_class

import swf_celery  # noqa: F401 - registers swf:// and the group batch
from benchmarks.stats import LoadProbe, per_round, ratio_text, ratios, round_order, spread
from swf_celery.db import broker_url

ROUNDS = int(os.environ.get("BENCH_PUBLISH_ROUNDS", "5"))
TASKS = 1000
QUEUE = "bench_publish"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _app(broker: str) -> Celery:
    app = Celery("bench_publish", broker=broker, set_as_current=False)
    app.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True,
                    broker_connection_max_retries=1)

    @app.task(name="bench_publish.noop", shared=False)
    def noop() -> None:
        return None

    return app


@contextlib.contextmanager
def _unbatched() -> Iterator[None]:
    """Celery's group as it is without the batch: one publish (one statement) per task."""
    batched = group_class._apply_tasks
    group_class._apply_tasks = batched.__wrapped__  # type: ignore[attr-defined,method-assign]
    try:
        yield
    finally:
        group_class._apply_tasks = batched  # type: ignore[method-assign]


def _publish_seconds(app: Celery) -> float:
    noop = app.tasks["bench_publish.noop"]
    start = time.perf_counter()
    group(noop.s() for _ in range(TASKS)).apply_async()
    elapsed = time.perf_counter() - start
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(QUEUE)
    return elapsed


def _systems(database_url: str) -> dict[str, Callable[[], float]]:
    apps = {"swf": _app(broker_url(database_url)), "redis": _app(REDIS_URL),
            "rabbitmq": _app(AMQP_URL), "memory": _app("memory://")}

    def unbatched() -> float:
        with _unbatched():
            return _publish_seconds(apps["swf"])

    return {"swf (this project)": lambda: _publish_seconds(apps["swf"]),
            "swf, one statement per task": unbatched,
            "Redis": lambda: _publish_seconds(apps["redis"]),
            "RabbitMQ": lambda: _publish_seconds(apps["rabbitmq"]),
            "memory:// (Celery alone, no broker)": lambda: _publish_seconds(apps["memory"])}


def _measure(systems: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    for publish in systems.values():  # connections, queues, imports
        publish()
    times: dict[str, list[float]] = {name: [] for name in systems}
    for round_no in range(ROUNDS):
        for name in round_order(list(systems), round_no):
            try:
                times[name].append(systems[name]() * 1000)
            except Exception as exc:  # noqa: BLE001 - a broker that is down fails its row
                print(f"   {name}: {exc}")
                times[name].append(float("nan"))
    return times


def run(database_url: str) -> str:
    """The section of docs/benchmarks.md."""
    probe = LoadProbe()
    times = _measure(_systems(database_url))
    lines = [
        "## Publishing a group (`bench_publish`)",
        "",
        f"Command: `python -m benchmarks.run bench_publish` (part of `make bench`). "
        f"`group(noop.s() for _ in range({TASKS})).apply_async()` from one client, nothing "
        f"consuming; {ROUNDS} rounds, systems alternating; median (range) shown. On swf:// a "
        "group is stored in one insert per queue (docs/transport.md); the row \"one "
        "statement per task\" is the same group published message by message. memory:// "
        "is Celery's own cost of building and publishing the messages, with no broker.",
        "",
        probe.note(),
        "",
        f"| system | {TASKS}-task group (ms) | per task (µs) | rounds (ms) |",
        "|---|---:|---:|---|",
    ]
    for name, rounds in times.items():
        per_task = [ms * 1000 / TASKS for ms in rounds]
        lines.append(f"| {name} | {spread(rounds, '.0f')} | {spread(per_task, '.0f')} | "
                     f"{per_round(rounds, '.0f')} |")
    swf, redis = times["swf (this project)"], times["Redis"]
    lines += [
        "",
        f"- Redis / swf publish time (above 1.0x: swf is faster): "
        f"{ratio_text(ratios(redis, swf))}; target >= 1.0x.",
        f"- The batch's gain: {ratio_text(ratios(times['swf, one statement per task'], swf))}"
        " faster than one statement per task.",
        f"- Celery's own share: memory:// takes "
        f"{ratio_text(ratios(times['memory:// (Celery alone, no broker)'], swf))} of swf's "
        "time; the rest is the broker's.",
    ]
    return "\n".join(lines) + "\n"
