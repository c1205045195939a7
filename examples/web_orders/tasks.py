"""The follow-up task of the web handler: confirm an order once its row is committed.

``celery -A examples.web_orders.tasks worker -Q orders`` runs it.
"""

from __future__ import annotations

import psycopg
from celery import Celery

import swf_celery  # noqa: F401 - registers swf://
from swf_celery import db

# $SWF_DATABASE_URL, else the embedded server (started if needed).
DATABASE_URL = db.database_url(start_embedded=True).url
SWF_URL = db.broker_url(DATABASE_URL)
QUEUE = "orders"
APP_NAME = "examples.web_orders.tasks"

app = Celery("web_orders", broker=SWF_URL, backend=SWF_URL)
app.conf.update(task_acks_late=True, task_default_queue=QUEUE)


@app.task(name="orders.confirm")
def confirm(order_id: int) -> int:
    """Mark the order confirmed. Its row is always there: the task was enqueued in the
    transaction that wrote it, so it cannot run before that commit, nor after a rollback."""
    with psycopg.connect(db.normalize_dsn(DATABASE_URL), autocommit=True) as conn:
        row = conn.execute("UPDATE orders SET confirmed = true WHERE id = %s RETURNING id",
                           [order_id]).fetchone()
    if row is None:
        raise LookupError(f"order {order_id} does not exist")
    return order_id
