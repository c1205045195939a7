"""The workflow the web page starts and watches: a Celery app on the ``web_steps`` queue.

``ingest`` fans out to three parsers that run in parallel, ``merge`` joins them and
``report`` finishes; each step takes a moment so the page can show it changing state.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

import swf_celery as swf
from swf_celery import db

# $SWF_DATABASE_URL, else the embedded server (started if needed).
DATABASE_URL = db.database_url(start_embedded=True).url
SWF_URL = db.broker_url(DATABASE_URL)
QUEUE = "web_steps"

app = Celery("web_events", broker=SWF_URL, backend=SWF_URL)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_default_queue=QUEUE)


def _work(inputs: dict[str, Any], seconds: float) -> None:
    time.sleep(seconds * inputs["run"].get("speed", 1.0))


@swf.step(queue=QUEUE)
@app.task
def ingest(inputs: dict[str, Any]) -> list[str]:
    _work(inputs, 0.8)
    return ["orders.csv", "refunds.csv", "customers.csv"]


@swf.step(depends_on=["ingest"], queue=QUEUE)
@app.task
def parse_orders(inputs: dict[str, Any]) -> int:
    _work(inputs, 1.5)
    return 1200


@swf.step(depends_on=["ingest"], queue=QUEUE)
@app.task
def parse_refunds(inputs: dict[str, Any]) -> int:
    _work(inputs, 1.0)
    return 37


@swf.step(depends_on=["ingest"], queue=QUEUE)
@app.task
def parse_customers(inputs: dict[str, Any]) -> int:
    _work(inputs, 2.0)
    return 410


@swf.step(depends_on=["parse_orders", "parse_refunds", "parse_customers"], queue=QUEUE)
@app.task
def merge(inputs: dict[str, Any]) -> dict[str, int]:
    _work(inputs, 0.8)
    return {"orders": inputs["parse_orders"], "refunds": inputs["parse_refunds"],
            "customers": inputs["parse_customers"]}


@swf.step(depends_on=["merge"], queue=QUEUE)
@app.task
def report(inputs: dict[str, Any]) -> str:
    _work(inputs, 0.5)
    merged = inputs["merge"]
    return f"{merged['orders'] - merged['refunds']} net orders from {merged['customers']} customers"


class DailyReport:
    """ingest -> (parse_orders | parse_refunds | parse_customers) -> merge -> report."""

    ingest = ingest
    parse_orders = parse_orders
    parse_refunds = parse_refunds
    parse_customers = parse_customers
    merge = merge
    report = report
