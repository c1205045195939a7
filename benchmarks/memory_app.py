"""The worker of ``bench_peers``' Celery row: ``broker_app`` on kombu's in-process
``memory://`` broker, its client a thread inside the worker's main process.

A ``memory://`` queue lives in one process's memory, so the tasks must be sent from inside
the worker: when the worker is ready, a thread warms it up, writes ``ready`` into the
directory ``BENCH_MEMORY_DIR`` and waits for a ``go`` file there (the harness starts its
CPU meter in between). It then sends ``BENCH_MEMORY_TASKS`` no-op tasks one by one,
collects every result from the same result backend as swf's (``BENCH_BACKEND``) and
writes ``throughput.json`` (the sending seconds and rate, the whole run's seconds and the
thread's own CPU, which the harness subtracts from the worker's); then it times
``BENCH_MEMORY_ROUND_TRIPS`` sequential ``apply_async().get()`` and writes
``round_trips.json``. What is left is Celery's own cost per task: no broker server.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from celery import signals
from celery.result import allow_join_result

from benchmarks.broker_app import app

__all__ = ["app"]


def _write(name: str, values: dict[str, Any]) -> None:
    folder = Path(os.environ["BENCH_MEMORY_DIR"])
    (folder / f"{name}.tmp").write_text(json.dumps(values))
    (folder / f"{name}.tmp").rename(folder / name)


def _client() -> None:
    tasks = int(os.environ.get("BENCH_MEMORY_TASKS", "1000"))
    round_trips = int(os.environ.get("BENCH_MEMORY_ROUND_TRIPS", "100"))
    go = Path(os.environ["BENCH_MEMORY_DIR"]) / "go"
    with allow_join_result():  # the prefork pool marks the main process as a task's
        for r in [app.send_task("bench.noop") for _ in range(4)]:
            r.get(timeout=60)
        _write("ready", {})
        while not go.exists():
            time.sleep(0.01)
        cpu, t0 = time.thread_time(), time.perf_counter()
        results = [app.send_task("bench.noop") for _ in range(tasks)]
        sent = time.perf_counter() - t0
        for r in results:
            r.get(timeout=300)
        _write("throughput.json", {"seconds": time.perf_counter() - t0, "enqueue": sent,
                                   "cpu": time.thread_time() - cpu})
        latencies = []
        for _ in range(round_trips):
            t = time.perf_counter()
            app.send_task("bench.noop").get(timeout=60)
            latencies.append(time.perf_counter() - t)
        _write("round_trips.json", {"latencies": latencies})


@signals.worker_ready.connect
def _start_client(**_: Any) -> None:
    if os.environ.get("BENCH_MEMORY_DIR"):
        threading.Thread(target=_client, name="bench-memory-client", daemon=True).start()
