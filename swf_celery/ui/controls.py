"""Run controls (POST, CSRF-checked, absent in read-only mode) and the live event streams.

Controls call the public lifecycle API (``swf_celery.pause_workflow_run`` and the rest)
and redirect back to the run page with a notice; an error the API raises (a finished run
cannot be paused, say) becomes that notice, never a stack trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

import swf_celery as swf
from swf_celery.errors import RunNotFound, SwfError
from swf_celery.ui.events import GAP, sse
from swf_celery.ui.forms import back, checked_form
from swf_celery.ui.layout import path_part
from swf_celery.workflows.coordinator import TERMINAL
from swf_celery.workflows.lifecycle import DEFAULT_CANCEL_REASON

#: Seconds between comments on a quiet stream, so proxies keep it open.
KEEPALIVE = 15.0
MAX_REASON = 500


async def control(request: Request) -> Response:
    """POST /runs/{run_id}/{action}: pause, resume, cancel (reason), retry (reset_all)."""
    console = request.app.state.console
    form = await checked_form(request, console.csrf, console.read_only)
    if isinstance(form, Response):
        return form
    run_id, action = request.path_params["run_id"], request.path_params["action"]
    page = f"/runs/{path_part(run_id)}"
    db = console.db
    try:
        if action == "pause":
            await run_in_threadpool(swf.pause_workflow_run, run_id, db)
            return back(request, page, "paused: running steps finish, no new step starts")
        if action == "resume":
            await run_in_threadpool(swf.resume_workflow_run, run_id, db)
            return back(request, page, "resumed")
        if action == "cancel":
            reason = str(form.get("reason") or "").strip()[:MAX_REASON]
            await run_in_threadpool(lambda: swf.cancel_workflow_run(
                run_id, db, reason=reason or DEFAULT_CANCEL_REASON, app=console.celery_app))
            return back(request, page, "cancelled")
        if action == "retry":
            reset = form.get("reset_all") == "1"
            new_id = await run_in_threadpool(
                lambda: swf.retry_failed_workflow(run_id, db, reset_all=reset))
            return back(request, f"/runs/{path_part(new_id)}", f"retry of {run_id}")
    except RunNotFound as exc:
        return console.context(request).error(404, str(exc))
    except SwfError as exc:
        return back(request, page, f"{action} refused: {exc}")
    return console.context(request).error(404, f"no such control {action!r}")


Keep = Callable[[dict[str, Any]], "str | None"]


async def _stream(queue: asyncio.Queue[dict[str, Any]], first: list[str],
                  keep: Keep) -> AsyncIterator[str]:
    for item in first:
        yield item
    while True:
        try:
            event = await asyncio.wait_for(queue.get(), KEEPALIVE)
        except asyncio.TimeoutError:
            yield ": keepalive\n\n"
            continue
        if event is GAP or event.get("gap"):
            yield sse("gap", {})
            continue
        out = keep(event)
        if out is not None:
            yield out


def _streaming(request: Request, keep: Keep) -> StreamingResponse:
    hub = request.app.state.console.hub

    async def body() -> AsyncIterator[str]:
        async with hub.subscribe() as queue:
            # The LISTEN is up: say so, then forward (the page re-reads once on "ready").
            async for chunk in _stream(queue, [sse("ready", {})], keep):
                yield chunk

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def run_events(request: Request) -> Response:
    """GET /runs/{run_id}/events: ``step`` and ``run`` events of one run (SSE)."""
    console = request.app.state.console
    try:
        status = await run_in_threadpool(swf.get_run_status, request.path_params["run_id"],
                                         console.db)
    except RunNotFound as exc:
        return console.context(request).error(404, str(exc))
    rid = status.run_id

    def keep(event: dict[str, Any]) -> str | None:
        if event.get("run_id") != rid:
            return None
        if event.get("step") is None:
            return sse("run", {"status": event.get("status"),
                               "finished": event.get("status") in TERMINAL})
        return sse("step", {"step": event.get("step"), "status": event.get("status")})

    return _streaming(request, keep)


async def all_events(request: Request) -> Response:
    """GET /events: run-level events of every run (SSE), for the runs list."""

    def keep(event: dict[str, Any]) -> str | None:
        if event.get("step") is not None:
            return None
        return sse("run", {"run_id": event.get("run_id"), "status": event.get("status")})

    return _streaming(request, keep)
