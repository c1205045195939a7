"""A user's Celery app with a schedule in PostgreSQL, as docs/schedules.md shows it.

Broker: the swf:// URL of ``$SWF_DATABASE_URL``; ``SWF_TEST_BROKER`` overrides it (Redis).
Each task run inserts (task id, tag, time) into the table ``beat_runs`` of the schedule's
database (made by the tests), so a test counts runs per tick. ``SWF_TEST_EVERY`` (seconds)
adds an entry ``every`` of ``beat_app.record`` in ``beat_schedule``; ``SWF_TEST_QUEUE`` names
the default queue (a Redis shared with other tests).

``SWF_TEST_STALL`` names a file: the first beat to publish once it exists writes its pid and
the task id into ``<file>.pid`` and then hangs inside its tick's transaction (the message
inserted, not committed), for a test to kill it there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery
from celery.signals import after_task_publish

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
    task_default_queue=os.environ.get("SWF_TEST_QUEUE", "celery"),
    imports=["tests.schedules.flows"])
if os.environ.get("SWF_TEST_EVERY"):
    # Celery's keys only: Celery's own scheduler reads this schedule too (the import test).
    app.conf.beat_schedule = {
        "every": {"task": "beat_app.record", "schedule": float(os.environ["SWF_TEST_EVERY"]),
                  "args": ["every"]}}

assert swf_celery.__version__


@app.task(name="beat_app.record", bind=True)
def record(self: object, tag: str, sleep: float = 0.0) -> str:
    """Record this run (task id, tag, start time); sleep ``sleep`` seconds."""
    task_id = self.request.id  # type: ignore[attr-defined]
    with psycopg.connect(_url, autocommit=True) as conn:
        conn.execute("INSERT INTO beat_runs (task_id, tag) VALUES (%s, %s)", (task_id, tag))
    time.sleep(sleep)
    return tag


@after_task_publish.connect
def _stall(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    flag = os.environ.get("SWF_TEST_STALL")
    if not flag or not Path(flag).exists():
        return
    try:
        with open(f"{flag}.pid", "x") as out:  # the first beat only
            out.write(f"{os.getpid()} {(headers or {}).get('id')}")
    except FileExistsError:
        return
    time.sleep(600)
