"""A user's Celery app with a schedule in PostgreSQL, as docs/schedules.md shows it.

Broker: the swf:// URL of ``$SWF_DATABASE_URL``; ``SWF_TEST_BROKER`` overrides it (Redis).
Each task run inserts (task id, tag, time) into the table ``beat_runs`` of the schedule's
database, so a test counts runs per tick. ``SWF_TEST_EVERY`` (seconds) adds an entry
``every`` of ``beat_app.record`` in ``beat_schedule``.
"""

from __future__ import annotations

import os
import time

import psycopg
from celery import Celery

import swf_celery
from tests.schedules.flows import Nightly  # noqa: F401 - the workflow's tasks, registered

_url = os.environ.get("SWF_DATABASE_URL", "postgresql://localhost/unset")
app = Celery("beat_app", broker=os.environ.get("SWF_TEST_BROKER")
             or f"swf://{_url.split('://', 1)[1]}")
app.conf.update(
    beat_scheduler="swf_celery.schedules:Scheduler",
    beat_max_loop_interval=float(os.environ.get("SWF_TEST_BEAT_LOOP", "1")),
    swf_database_url=_url,
    swf_beat_grace=float(os.environ.get("SWF_TEST_GRACE", "30")),
    worker_hijack_root_logger=False, task_acks_late=True,
    imports=["tests.schedules.flows"])
if os.environ.get("SWF_TEST_EVERY"):
    app.conf.beat_schedule = {
        "every": {"task": "beat_app.record", "schedule": float(os.environ["SWF_TEST_EVERY"]),
                  "args": ["every"], "missed": os.environ.get("SWF_TEST_MISSED", "once")}}

assert swf_celery.__version__


@app.task(name="beat_app.record", bind=True)
def record(self: object, tag: str, sleep: float = 0.0) -> str:
    """Record this run (task id, tag, start time); sleep ``sleep`` seconds."""
    task_id = self.request.id  # type: ignore[attr-defined]
    with psycopg.connect(_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS beat_runs (task_id text, tag text, "
                     "started_at timestamptz DEFAULT clock_timestamp())")
        conn.execute("INSERT INTO beat_runs (task_id, tag) VALUES (%s, %s)", (task_id, tag))
    time.sleep(sleep)
    return tag
