"""The Celery app of ``make churn`` (:mod:`benchmarks.bench_churn`): as a user writes it.

Broker and result backend: the ``swf://`` URL of ``$SWF_DATABASE_URL``; every other setting
is Celery's or swf-celery's default (retention included: the worker cleans up hourly).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

import swf_celery  # noqa: F401 - registers swf:// and the step runner
from swf_celery import db

URL = os.environ.get("SWF_DATABASE_URL", "postgresql://localhost/unset")
app = Celery("churn", broker=db.broker_url(URL), backend=db.broker_url(URL))
app.conf.update(task_default_queue="churn", broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


@signals.after_setup_logger.connect
def _quiet(**_: Any) -> None:
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


@app.task(name="churn.noop")
def noop(n: int = 0) -> int:
    """Return its argument: the result row is part of the churn."""
    return n


@app.task(name="churn.step")
def step(inputs: Any = None) -> dict[str, int]:
    """A workflow step with a small output."""
    return {"ok": 1}


class ThreeSteps:
    """The churn's workflow (the seed's form): two independent steps, then one depending on
    the first."""

    __workflow_slug__ = "churn.three_steps"

    @staticmethod
    def __workflow_steps__() -> list[Any]:
        return [("first", step, {}), ("other", step, {}),
                ("second", step, {"depends_on": ["first"]})]
