"""A small ASGI app that streams a workflow run's events to the browser (Server-Sent Events).

``uvicorn --factory examples.web_events.web:create_app`` serves:

- ``GET /``: the page (``page.html``): a button that starts a run and a table of its steps
  that changes state live;
- ``POST /runs``: start a run of :class:`~examples.web_events.tasks.DailyReport`;
  ``{"run_id": …}``;
- ``GET /runs/{run_id}``: the run's status (``get_run_status(...).to_dict()``);
- ``GET /runs/{run_id}/events``: ``text/event-stream``. First a ``snapshot`` event (the
  whole status), then one ``workflow`` event per engine event of this run
  (``{"run_id", "step", "status"}``, from ``swf_celery.listen("workflow_events")``), and a
  last ``snapshot`` when the run ends. After a reconnect of the database listener a fresh
  ``snapshot`` covers anything that may have been missed.

Needs the ``web`` extra: ``pip install 'swf-celery[web]'`` (Starlette and uvicorn).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import swf_celery as swf
from swf_celery.errors import RunNotFound

PAGE = Path(__file__).with_name("page.html")
FINISHED = ("completed", "failed", "cancelled")
#: Seconds between SSE comments on a quiet stream, so proxies keep the connection open.
KEEPALIVE = 15.0


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def create_app(database_url: str | None = None, *, speed: float = 1.0) -> Starlette:
    """The ASGI app on ``database_url`` (default: ``tasks.DATABASE_URL``).

    ``speed`` scales the steps' work (the smoke test runs them faster).
    """
    from examples.web_events import tasks

    db = database_url or tasks.DATABASE_URL

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.read_text())

    async def start_run(request: Request) -> Response:
        run_id = await run_in_threadpool(swf.Executor.start, tasks.DailyReport,
                                         {"speed": speed}, db)
        return JSONResponse({"run_id": run_id}, status_code=201)

    async def run_status(request: Request) -> Response:
        try:
            status = await run_in_threadpool(swf.get_run_status,
                                             request.path_params["run_id"], db)
        except RunNotFound as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(json.loads(json.dumps(status.to_dict(), default=str)))

    async def run_events(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        # LISTEN first, then read the status: every event after the snapshot is delivered.
        listener = await swf.alisten("workflow_events", db)
        try:
            status = await run_in_threadpool(swf.get_run_status, run_id, db)
        except RunNotFound as exc:
            await listener.aclose()
            return JSONResponse({"error": str(exc)}, status_code=404)
        run_id = status.run_id

        async def stream() -> AsyncIterator[str]:
            try:
                yield _sse("snapshot", status.to_dict())
                if status.status in FINISHED:
                    return
                while True:
                    try:
                        note = await asyncio.wait_for(listener.__anext__(), KEEPALIVE)
                    except asyncio.TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    except StopAsyncIteration:
                        return
                    if note.kind == "gap":
                        fresh = await run_in_threadpool(swf.get_run_status, run_id, db)
                        yield _sse("snapshot", fresh.to_dict())
                        continue
                    if note.payload is None:
                        continue
                    event = note.json()
                    if not isinstance(event, dict) or event.get("run_id") != run_id:
                        continue
                    # the NOTIFY also names the stored message (swf_message_id): not shown
                    event = {k: event.get(k) for k in ("run_id", "step", "status")}
                    yield _sse("workflow", event)
                    if event.get("step") is None and event.get("status") in FINISHED:
                        final = await run_in_threadpool(swf.get_run_status, run_id, db)
                        yield _sse("snapshot", final.to_dict())
                        return
            finally:
                await listener.aclose()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    return Starlette(routes=[
        Route("/", page),
        Route("/runs", start_run, methods=["POST"]),
        Route("/runs/{run_id}", run_status),
        Route("/runs/{run_id}/events", run_events),
    ])
