"""Place three orders through the web handler, one of which fails after enqueueing.

``python -m examples.web_orders.run``: migrates, creates the ``orders`` table, starts
``celery -A examples.web_orders.tasks worker -Q orders``, sends the requests through
Starlette's test client and shows that exactly the committed orders were confirmed.
"""

from __future__ import annotations

import sys
import time

import psycopg

from examples.web_orders.tasks import APP_NAME, DATABASE_URL, QUEUE
from swf_celery import db
from swf_celery.ops import migrate
from swf_celery.testing import worker_process


def main() -> int:
    try:
        from starlette.testclient import TestClient
    except ImportError:
        print("this example needs the web extra: pip install 'swf-celery[web]'",
              file=sys.stderr)
        return 2
    from examples.web_orders.web import create_app

    migrate.migrate(DATABASE_URL)
    with psycopg.connect(db.normalize_dsn(DATABASE_URL), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, item text, "
                     "confirmed boolean NOT NULL DEFAULT false)")
    with worker_process(APP_NAME, queues=[QUEUE], concurrency=2), \
            TestClient(create_app(DATABASE_URL)) as http:
        for body in ({"item": "book"}, {"item": "lamp", "fail": True}, {"item": "pen"}):
            reply = http.post("/orders", json=body)
            print(f"POST /orders {body} -> {reply.status_code} {reply.json()}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            orders = http.get("/orders").json()
            if orders and all(o["confirmed"] for o in orders):
                break
            time.sleep(0.2)
    for order in orders:
        print(f"order {order['id']} {order['item']:5} confirmed={order['confirmed']}")
    print(f"result: {len(orders)} orders, {sum(o['confirmed'] for o in orders)} confirmed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
