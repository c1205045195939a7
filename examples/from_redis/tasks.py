"""An existing Celery app, unchanged by the move from Redis to PostgreSQL.

Which broker and result backend it uses is configuration only:
``CELERY_CONFIG_MODULE=examples.from_redis.redis_config`` (before) or
``examples.from_redis.swf_config`` (after). Nothing in this file mentions either.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("shop")
app.config_from_object(os.environ.get("CELERY_CONFIG_MODULE",
                                      "examples.from_redis.redis_config"))


@app.task
def add_to_invoice(invoice: int, amount: float) -> dict[str, float]:
    return {"invoice": invoice, "amount": amount}


@app.task
def send_receipt(invoice: int) -> str:
    return f"receipt {invoice} sent"
