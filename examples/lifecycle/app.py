"""A four-step report workflow for the lifecycle example (``celery -A … worker -Q reports``).

``extract`` and ``transform`` announce on the channel ``report_steps`` that they are
running (``swf.notify_only``), so the example can pause or cancel a run while a step is
really executing. ``quality_gate`` fails while the file named in the run input (``gate``)
is missing: the stand-in for bad upstream data that someone fixes before retrying the run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from celery import Celery

import swf_celery as swf
from swf_celery import db

# $SWF_DATABASE_URL, else the embedded server (started if needed).
DATABASE_URL = db.database_url(start_embedded=True).url
SWF_URL = db.broker_url(DATABASE_URL)
QUEUE = "reports"
#: Channel on which steps say "I am running" (``{"tag": <run input tag>, "step": name}``).
RUNNING_CHANNEL = "report_steps"

app = Celery("lifecycle", broker=SWF_URL, backend=SWF_URL)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1)


def _running(inputs: dict[str, Any], step: str) -> None:
    swf.notify_only(RUNNING_CHANNEL, {"tag": inputs["run"]["tag"], "step": step}, DATABASE_URL)


@swf.step(queue=QUEUE)
@app.task
def extract(inputs: dict[str, Any]) -> int:
    _running(inputs, "extract")
    time.sleep(inputs["run"].get("seconds", 1.0))
    return 1200


@swf.step(depends_on=["extract"], queue=QUEUE)
@app.task
def transform(inputs: dict[str, Any]) -> int:
    _running(inputs, "transform")
    time.sleep(inputs["run"].get("seconds", 1.0))
    return inputs["extract"] // 2


@swf.step(depends_on=["transform"], queue=QUEUE, max_attempts=1)
@app.task
def quality_gate(inputs: dict[str, Any]) -> str:
    if not Path(inputs["run"]["gate"]).exists():
        raise ValueError("upstream data incomplete")
    return "passed"


@swf.step(depends_on=["transform", "quality_gate"], queue=QUEUE)
@app.task
def publish(inputs: dict[str, Any]) -> str:
    return f"published {inputs['transform']} rows"


class ReportFlow:
    """extract -> transform -> quality_gate -> publish."""

    extract = extract
    transform = transform
    quality_gate = quality_gate
    publish = publish
