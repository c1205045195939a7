"""Worker app of ``bench_limits``: tasks record their start and end in ``bench_limit_runs``.

Environment: ``SWF_BENCH_BROKER`` (swf:// URL), ``SWF_BENCH_VT`` (visibility timeout, s).
Limits come from the setting ``swf_flow_limits``; messages name their key in the header
``swf_key`` at publish.
"""

from __future__ import annotations

import os
import time

import psycopg
from celery import Celery

import swf_celery  # noqa: F401 - registers swf://
from swf_celery.db import normalize_dsn

BROKER = os.environ.get("SWF_BENCH_BROKER", "swf://postgres@127.0.0.1:5432/postgres")
#: Keys and their limits (tenant:big and api:free are keys without limits).
LIMITS = {"api:limited": {"rate": "50/s"}, "tenant:capped": {"concurrency": 3},
          "api:fast": {"rate": "100000/s"}}

app = Celery("bench_limits", broker=BROKER, task_cls="swf_celery:Task")
app.conf.update(
    task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True, worker_send_task_events=False,
    task_ignore_result=True, swf_flow_limits=LIMITS,
    broker_transport_options={"visibility_timeout": float(os.environ.get("SWF_BENCH_VT", "60")),
                              "polling_interval": float(os.environ.get("SWF_BENCH_POLL",
                                                                       "0.2"))},
)
_conn: psycopg.Connection | None = None


def _record(tag: str, phase: str) -> None:
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg.connect(normalize_dsn(BROKER), autocommit=True)
    _conn.execute("INSERT INTO bench_limit_runs (tag, phase, pid) VALUES (%s, %s, %s)",
                  [tag, phase, os.getpid()])


@app.task(name="bl.hit")
def hit(tag: str) -> None:
    _record(tag, "done")


@app.task(name="bl.hold")
def hold(tag: str, seconds: float) -> None:
    _record(tag, "start")
    time.sleep(seconds)
    _record(tag, "done")


@app.task(name="bl.noop")
def noop() -> None:
    """Nothing: the statements of a run are the broker's own."""
