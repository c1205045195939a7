"""Celery app of the broker benchmark: one no-op task; broker, backend and queue from env.

``BENCH_BROKER``, ``BENCH_BACKEND``, ``BENCH_QUEUE``, ``BENCH_TRANSPORT_OPTIONS`` (JSON).
Per-task INFO log lines are silenced so that logging costs the same (nothing) everywhere.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from celery import Celery, signals

import swf_celery  # noqa: F401 - registers swf://

app = Celery("bench_broker", broker=os.environ.get("BENCH_BROKER"),
             backend=os.environ.get("BENCH_BACKEND"))
app.conf.update(
    broker_transport_options=json.loads(os.environ.get("BENCH_TRANSPORT_OPTIONS", "{}")),
    task_default_queue=os.environ.get("BENCH_QUEUE", "bench"),
    worker_send_task_events=False,
    result_expires=600,
    broker_connection_retry_on_startup=True,
)


@signals.after_setup_logger.connect
def _quiet(**_: Any) -> None:
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


@app.task(name="bench.noop")
def noop() -> None:
    """Do nothing: the benchmark measures the broker."""


@app.task(name="bench.stamp")
def stamp() -> float:
    """Do nothing but say when it ran (the benchmark's throughput phase: when the worker
    was done, apart from when the client had collected every result)."""
    import time

    return time.time()
