"""The Celery app the backend benchmark's workers run: no-op tasks, configured by env.

``BENCH_BROKER``, ``BENCH_BACKEND`` and ``BENCH_QUEUE`` select broker, result backend and
queue, so one module serves every system compared.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

import swf_celery  # noqa: F401 - registers the swf:// kombu transport


def make_app(broker: str, backend: str, queue: str) -> Celery:
    """An app with the benchmark's tasks on ``queue``."""
    app = Celery("bench_backend", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=True,
                    worker_hijack_root_logger=False, result_chord_join_timeout=60)

    @app.task(name="bench.noop", shared=False)
    def noop(*args: Any) -> None:
        return None

    return app


_broker = os.environ.get("BENCH_BROKER")
app = make_app(_broker, os.environ["BENCH_BACKEND"], os.environ["BENCH_QUEUE"]) \
    if _broker else None
