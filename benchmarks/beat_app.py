"""The app of ``bench_beat``: beat on the PostgreSQL schedule, one task that notes when it
starts (task id and wall time, appended to ``$SWF_BENCH_BEAT_LOG``: no database write, so
a database restart loses no note)."""

from __future__ import annotations

import os
import time

from celery import Celery

import swf_celery
from swf_celery import db

_url = os.environ["SWF_DATABASE_URL"]
app = Celery("beat_bench", broker=db.broker_url(_url))
app.conf.update(beat_scheduler="swf_celery.schedules:Scheduler", swf_database_url=_url,
                worker_hijack_root_logger=False, task_default_queue="beat_bench")
assert swf_celery.__version__


@app.task(name="beat_bench.started", bind=True)
def started(self: object) -> None:
    """Append ``task_id wall_time`` to the log (one short write: atomic with O_APPEND)."""
    line = f"{self.request.id} {time.time():.6f}\n"  # type: ignore[attr-defined]
    with open(os.environ["SWF_BENCH_BEAT_LOG"], "a") as out:
        out.write(line)
