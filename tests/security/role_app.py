"""A Celery app as a user writes it, for workers and clients that log in as least-privilege
roles. Broker and result backend: the swf:// URL of ``$SWF_ROLE_URL`` (the worker's role)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

import swf_celery as swf
from swf_celery import db

QUEUE = "role_q"
_url = db.broker_url(os.environ.get("SWF_ROLE_URL", "postgresql://unset@127.0.0.1:1/unset"))
app = Celery("role_app", broker=_url, backend=_url)
app.conf.update(task_acks_late=True, task_default_queue=QUEUE, worker_hijack_root_logger=False,
                result_extended=True)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def total(values: list[int]) -> int:
    return sum(values)


@app.task
def boom(inputs: dict[str, Any]) -> None:
    raise RuntimeError("this step fails")


@swf.step(queue=QUEUE)
@app.task
def first(inputs: dict[str, Any]) -> int:
    return int(inputs["run"]["n"]) + 1


@swf.step(depends_on=["first"], queue=QUEUE)
@app.task
def second(inputs: dict[str, Any]) -> int:
    return inputs["first"] * 10


class TwoSteps:
    """first -> second, on the worker's queue."""

    first = first
    second = second


class Failing:
    """One step that fails (for retry by an operator)."""

    boom = swf.step(queue=QUEUE)(boom)
