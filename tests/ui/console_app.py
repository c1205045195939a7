"""A Celery app the console tests run workers of, written as a user would: ``import
swf_celery`` and Celery, nothing else of ours.

``Report`` is a diamond: ``fetch`` -> (``parse``, ``enrich``) -> ``publish``; each step
sleeps ``inputs["run"]["sleep"]`` seconds so a page can watch it change state.
``Held`` has steps on a queue no test worker consumes, so its runs stay in progress until
a test pauses or cancels them. ``reject_once`` rejects its first delivery (the transport
dead-letters it) and succeeds when delivered again, so requeueing a dead letter can be seen
to work.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import Reject

import swf_celery as swf

_url = os.environ.get("SWF_DATABASE_URL", "postgresql://localhost/unset")
_swf = "swf://" + _url.split("://", 1)[1]
QUEUE = "console_steps"
#: No worker consumes it.
IDLE_QUEUE = "console_idle"

app = Celery("console_app", broker=_swf, backend=_swf)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_default_queue=QUEUE,
                worker_hijack_root_logger=False)


def _nap(inputs: dict[str, Any]) -> None:
    time.sleep(float(inputs["run"].get("sleep", 0)))


@swf.step(queue=QUEUE)
@app.task
def fetch(inputs: dict[str, Any]) -> dict[str, Any]:
    _nap(inputs)
    return {"rows": 3, "note": "<script>alert('x')</script>"}


@swf.step(depends_on=["fetch"], queue=QUEUE)
@app.task
def parse(inputs: dict[str, Any]) -> int:
    _nap(inputs)
    return int(inputs["fetch"]["rows"]) * 2


@swf.step(depends_on=["fetch"], queue=QUEUE, max_attempts=2, retry_delay=0.1)
@app.task
def enrich(inputs: dict[str, Any]) -> str:
    _nap(inputs)
    if inputs["run"].get("fail"):
        raise ValueError("enrich failed <b>on purpose</b>")
    return "enriched"


@swf.step(depends_on=["parse", "enrich"], queue=QUEUE)
@app.task
def publish(inputs: dict[str, Any]) -> str:
    _nap(inputs)
    return f"{inputs['parse']} rows {inputs['enrich']}"


class Report:
    """fetch -> (parse | enrich) -> publish."""

    __workflow_slug__ = "report"
    fetch = fetch
    parse = parse
    enrich = enrich
    publish = publish


@swf.step(queue=IDLE_QUEUE)
@app.task
def hold(inputs: dict[str, Any]) -> None:
    return None


@swf.step(depends_on=["hold"], queue=IDLE_QUEUE)
@app.task
def release(inputs: dict[str, Any]) -> None:
    return None


class Held:
    """hold -> release, on a queue nobody consumes."""

    __workflow_slug__ = "held"
    hold = hold
    release = release


@app.task(acks_late=True)
def reject_once(marker: str) -> str:
    """Rejected (dead-lettered) the first time, done the second."""
    path = Path(marker)
    if not path.exists():
        path.write_text("rejected once\n")
        raise Reject("first delivery is refused", requeue=False)
    return "done on the second delivery"
