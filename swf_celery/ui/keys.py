"""The flow keys page: limited queues' keys with their limits, queued and held messages,
held keys, and release."""

from __future__ import annotations

import datetime as dt

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from swf_celery.errors import SwfError
from swf_celery.limits.holds import held_keys, key_stats, release_key
from swf_celery.ui.forms import back, checked_form
from swf_celery.ui.layout import esc, path_part, table, when


def _limit(rate: float | None, concurrency: int | None) -> str:
    parts = []
    if rate is not None:
        parts.append(f"{rate:g}/s")
    if concurrency is not None:
        parts.append(f"{concurrency} at once")
    return ", ".join(parts) or "none"


async def keys_page(request: Request) -> Response:
    """GET /keys: held keys (with release) and every limited queue's keys."""
    console = request.app.state.console
    ctx = console.context(request)
    held = await run_in_threadpool(held_keys, console.db)
    try:
        stats = await run_in_threadpool(key_stats, console.db)
        stats_note = ""
    except SwfError as exc:  # a role that may not read the queues' messages
        stats, stats_note = [], f'<p class="empty">{esc(exc)}</p>'
    held_rows = [[f"<code>{esc(k.key)}</code>", when(k.until), esc(k.reason or ""),
                  esc(k.by or ""),
                  ctx.form(f"/keys/{path_part(k.key)}/release", "release", cls="approve")]
                 for k in held]
    now = dt.datetime.now(dt.timezone.utc)
    key_rows = [[esc(s.queue), f"<code>{esc(s.key)}</code>", _limit(s.rate, s.concurrency),
                 str(s.queued), str(s.held),
                 when(s.held_until) if s.held_until and s.held_until > now else "",
                 "" if s.tokens is None else f"{s.tokens:.1f}"] for s in stats]
    body = ("<h1>Flow keys</h1><h2>held</h2>"
            + table(["key", "until", "reason", "by", ""], held_rows, empty="no key is held")
            + "<h2>keys of limited queues</h2>" + stats_note
            + table(["queue", "key", "limits", "queued", "delivered", "held until",
                     "tokens"], key_rows, empty="no limited queue has messages"))
    return ctx.page("Flow keys", "keys", body)


async def key_release(request: Request) -> Response:
    """POST /keys/{key}/release."""
    console = request.app.state.console
    form = await checked_form(request, console.csrf, console.read_only)
    if isinstance(form, Response):
        return form
    key = request.path_params["key"]
    try:
        released = await run_in_threadpool(release_key, key, console.db)
    except SwfError as exc:
        return back(request, "/keys", f"release refused: {exc}")
    return back(request, "/keys", f"key {key} released" if released else f"{key} was not held")
