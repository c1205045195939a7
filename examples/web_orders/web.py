"""A web handler that writes a row and enqueues its follow-up in ONE transaction.

``POST /orders {"item": "..."}`` inserts the order and enqueues ``orders.confirm`` inside
``swf.transaction(conn)``: the worker sees the task only when the row is committed, and a
handler that fails after enqueueing (``"fail": true`` here) leaves neither row nor task —
what ``transaction.on_commit`` does in Django, for any code and any worker.
Needs the ``web`` extra (Starlette).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import swf_celery as swf
from examples.web_orders.tasks import confirm
from swf_celery import db


def create_app(database_url: str) -> Starlette:
    """The ASGI app: ``POST /orders`` and ``GET /orders``."""
    pool = ConnectionPool(db.normalize_dsn(database_url), min_size=1, max_size=4, open=True)

    def place_order(body: dict[str, Any]) -> int:
        with pool.connection() as conn, swf.transaction(conn):
            row = conn.execute("INSERT INTO orders (item) VALUES (%s) RETURNING id",
                               [body["item"]]).fetchone()
            assert row is not None
            confirm.delay(row[0])  # part of this transaction
            if body.get("fail"):
                raise RuntimeError("payment refused")  # rolls back the row AND the task
            return int(row[0])

    async def orders(request: Request) -> JSONResponse:
        if request.method == "GET":
            with pool.connection() as conn:
                rows = conn.execute("SELECT id, item, confirmed FROM orders ORDER BY id")
                return JSONResponse([{"id": i, "item": it, "confirmed": c}
                                     for i, it, c in rows])
        try:
            # psycopg here is synchronous: the handler runs in Starlette's thread pool.
            order_id = await run_in_threadpool(place_order, await request.json())
        except RuntimeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=402)
        return JSONResponse({"id": order_id}, status_code=201)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        pool.close()

    return Starlette(routes=[Route("/orders", orders, methods=["GET", "POST"])],
                     lifespan=lifespan)
