"""The beat schedule: every entry with its next run and its last (task id, state), and
pause/resume, which beat processes follow at their next tick."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from swf_celery import schedules
from swf_celery.errors import SwfError
from swf_celery.ui.forms import back, checked_form
from swf_celery.ui.layout import badge, esc, path_part, table, when

ACTIONS = ("pause", "resume")


async def schedules_page(request: Request) -> Response:
    """GET /schedules: every entry, by name."""
    console = request.app.state.console
    ctx = console.context(request)
    found = await run_in_threadpool(schedules.list_entries, console.db)
    rows = []
    for e in found:
        if e.last_run_id:
            last = (f'<a href="{esc(ctx.url("/runs/" + e.last_run_id))}">'
                    f"run {esc(e.last_run_id[:8])}</a>")
        else:
            last = f"<code>{esc(e.last_task_id or '')}</code>"
        action = "resume" if e.paused else "pause"
        control = ctx.form(f"/schedules/{path_part(e.name)}/{action}", action, cls=action)
        rows.append([esc(e.name), esc(e.target), f"<code>{esc(e.schedule_text)}</code>",
                     "paused" if e.paused else when(e.next_run_at), when(e.last_run_at), last,
                     badge(e.last_state) if e.last_state else "", esc(e.missed),
                     str(e.total_run_count), control])
    body = ("<h1>Schedules</h1><p class=\"meta\">celery beat -S swf_celery.schedules.Scheduler"
            " \u00b7 edits apply at the next tick of every beat</p>"
            + table(["entry", "runs", "schedule", "next run", "last run", "last task / run",
                     "state", "missed", "count", ""], rows, empty="no schedule entries"))
    return ctx.page("Schedules", "schedules", body)


async def schedule_action(request: Request) -> Response:
    """POST /schedules/{name}/pause or /resume."""
    console = request.app.state.console
    form = await checked_form(request, console.csrf, console.read_only)
    if isinstance(form, Response):
        return form
    name = request.path_params["name"]
    action = request.path_params["action"]
    if action not in ACTIONS:
        return back(request, "/schedules", f"unknown action {action!r}")
    try:
        if action == "pause":
            await run_in_threadpool(schedules.pause, name, console.db)
        else:
            await run_in_threadpool(lambda: schedules.resume(name, repo=console.db))
    except SwfError as exc:
        return back(request, "/schedules", f"{action} refused: {exc}")
    return back(request, "/schedules", f"{name} {action}d")
