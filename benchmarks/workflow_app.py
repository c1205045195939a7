"""Celery app for bench_workflow: no-op steps on the swf:// broker or on Redis.

``BENCH_BROKER=swf`` (default): broker = ``$SWF_DATABASE_URL`` as swf://, steps run as
workflow steps. As a user's app would, it imports ``swf_celery`` and declares plain Celery
tasks: the step runner (``swf_celery.step``) is registered by that import alone, and the
workflow lists the tasks in the seed's ``__workflow_steps__`` form
(``benchmarks.bench_workflow.layered_workflow``). ``BENCH_BROKER=redis``: Redis broker and
result backend (``$BENCH_REDIS_URL``) for the canvas comparison.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger

import swf_celery  # noqa: F401 - the swf:// broker and the step runner
from swf_celery import db

_kind = os.environ.get("BENCH_BROKER", "swf")
if _kind == "redis":
    _redis = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
    app = Celery("workflow_app", broker=_redis, backend=_redis)
else:
    _url = os.environ.get("SWF_DATABASE_URL", "postgresql://localhost/unset")
    app = Celery("workflow_app", broker=db.broker_url(_url))
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=4,
                task_default_queue="bench_workflow", worker_hijack_root_logger=False,
                broker_transport_options={"visibility_timeout": 60})


@app.task
def noop(inputs: Any = None) -> int:
    """A no-op step (the workflow form receives one mapping; canvas passes nothing)."""
    return 0


@app.task
def barrier(results: Any = None) -> int:
    """The chord callback closing one layer of the canvas."""
    return 0


@after_setup_logger.connect
def _quiet_task_logs(**_: Any) -> None:
    # Per-task INFO lines ("received", "succeeded") would cost both systems alike; drop them.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)
