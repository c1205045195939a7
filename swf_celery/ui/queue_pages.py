"""The queues page and a queue's dead letters, with requeue and purge."""

from __future__ import annotations

import threading
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from swf_celery.errors import QueueNameError
from swf_celery.ui import queues
from swf_celery.ui.forms import back, checked_form
from swf_celery.ui.layout import Context, esc, path_part, qs, seconds, table, when

#: Seconds a count of consumers (from Celery's ``inspect active_queues``) is reused.
CONSUMERS_TTL = 10.0
INSPECT_TIMEOUT = 1.0


class Consumers:
    """Consumers per queue, asked of the workers (``inspect().active_queues()``), cached.

    Without a Celery app there is nobody to ask and the column stays empty.
    """

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._at = 0.0
        self._counts: dict[str, int] | None = None

    def counts(self) -> dict[str, int] | None:
        """``{queue: workers consuming it}``; ``None`` when unknown."""
        if self._app is None:
            return None
        with self._lock:
            if time.monotonic() - self._at > CONSUMERS_TTL:
                try:
                    replies = self._app.control.inspect(timeout=INSPECT_TIMEOUT).active_queues()
                except Exception:  # a broker hiccup must not take the page down
                    replies = None
                counts: dict[str, int] = {}
                for worker_queues in (replies or {}).values():
                    for q in worker_queues or []:
                        counts[q.get("name", "")] = counts.get(q.get("name", ""), 0) + 1
                self._counts, self._at = counts, time.monotonic()
            return self._counts


def _mark(q: queues.QueueStats, name: str) -> str:
    mark = q.mark(name)
    if not mark:
        return ""
    what = "estimate from PostgreSQL's statistics" if mark == queues.ESTIMATE else "at least"
    return f'<abbr class="approx" title="{what}">{mark}</abbr>'


def _count(q: queues.QueueStats, name: str) -> str:
    """A count of ``q`` as the page shows it: exact, or marked as estimate or lower bound."""
    return _mark(q, name) + str(getattr(q, name))


def _hide(name: str) -> bool:
    # Celery's per-process queues (remote control, replies, events): shown on request.
    return name.endswith(".pidbox") or name.endswith(".reply.celery.pidbox") or \
        name.startswith("celeryev.")


async def queues_page(request: Request) -> Response:
    """GET /queues: every queue's depth, oldest age, delayed, held, consumers, dead letters."""
    console = request.app.state.console
    ctx = console.context(request)
    stats = await run_in_threadpool(queues.queue_stats, console.db)
    consumers = await run_in_threadpool(console.consumers.counts)
    show_all = request.query_params.get("all") == "1"
    shown = [q for q in stats if show_all or not _hide(q.name)]
    rows = [[f'<a href="{esc(ctx.url("/queues/" + path_part(q.name)))}">{esc(q.name)}</a>',
             _count(q, "depth"), _count(q, "ready"), _count(q, "delayed"), _count(q, "held"),
             _mark(q, "oldest_age") + seconds(q.oldest_age),
             "" if consumers is None else str(consumers.get(q.name, 0)),
             (f'<a class="dead" href="{esc(ctx.url("/queues/" + path_part(q.name)))}#dead">'
              f"{_count(q, 'dead_letters')}</a>") if q.dead_letters else "0"] for q in shown]
    hidden = len(stats) - len(shown)
    hints = (f'<p class="hint">{hidden} of Celery\'s own queues (remote control, replies, '
             f'events) hidden: <a href="{esc(ctx.url("/queues"))}{qs(all="1")}">show all</a>'
             "</p>") if hidden else ""
    if any(q.approximate for q in shown):
        hints += (f'<p class="hint">Counts over {queues.COUNT_LIMIT:,} are estimates '
                  f"({queues.ESTIMATE}, from PostgreSQL's statistics) or lower bounds "
                  f"({queues.AT_LEAST}): the page reads at most {queues.COUNT_LIMIT:,} "
                  "messages of a queue per count.</p>")
    if consumers is None and console.read_only:
        hints += ('<p class="hint">A read-only console asks no worker anything: consumers '
                  "are not counted.</p>")
    body = ('<h1>Queues</h1><section id="queues" class="live">'
            + table(["queue", "depth", "ready", "delayed", "held", "oldest ready",
                     "consumers", "dead letters"], rows, cls="queues",
                    empty="no queues yet: start a worker or send a task")
            + hints + "</section>")
    return ctx.page("Queues", "queues", body, live={"poll": "5"})


def _dead_rows(ctx: Context, name: str, letters: list[queues.DeadLetter]) -> list[list[str]]:
    base = f"/queues/{path_part(name)}/dead-letters"
    rows = []
    for d in letters:
        one = f'<input type="hidden" name="ids" value="{d.msg_id}">'
        actions = (ctx.form(f"{base}/requeue", "requeue", fields=one, cls="requeue")
                   + ctx.form(f"{base}/purge", "delete", fields=one, cls="purge",
                              confirm="Delete this message for good?"))
        cut = (f'<p class="cut">showing {queues.BODY_CAP:,} of {d.body_length:,} characters'
               "</p>") if d.body_length > queues.BODY_CAP else ""
        rows.append([str(d.msg_id), esc(d.reason), esc(d.task or ""),
                     f"<code>{esc(d.task_id or '')}</code>", str(d.deliveries),
                     when(d.archived_at),
                     f"<details><summary>message</summary><pre>"
                     f"{esc(queues.pretty_body(d.body))}</pre>{cut}</details>", actions])
    return rows


async def queue_page(request: Request) -> Response:
    """GET /queues/{name}: one queue's counts and its dead letters."""
    console = request.app.state.console
    ctx = console.context(request)
    name = request.path_params["name"]
    try:
        letters = await run_in_threadpool(queues.dead_letters, console.db, name)
    except QueueNameError as exc:
        return ctx.error(404, str(exc))
    stats = next(iter(await run_in_threadpool(queues.queue_stats, console.db, [name])), None)
    summary = ""
    if stats is not None:
        summary = (f'<p class="meta">depth {_count(stats, "depth")} \u00b7 ready '
                   f'{_count(stats, "ready")} \u00b7 delayed {_count(stats, "delayed")} '
                   f'\u00b7 held {_count(stats, "held")} \u00b7 oldest ready '
                   f"{_mark(stats, 'oldest_age')}{seconds(stats.oldest_age) or '-'}</p>")
    base = f"/queues/{path_part(name)}/dead-letters"
    more = ""
    if stats is not None and stats.dead_letters > len(letters):
        more = (f'<p class="hint">showing the newest {len(letters)} of '
                f"{_count(stats, 'dead_letters')}; requeue all and delete all act on every "
                "one</p>")
    bulk = ""
    if letters:
        bulk = (ctx.form(f"{base}/requeue", "requeue all", cls="requeue-all")
                + ctx.form(f"{base}/purge", "delete all", cls="purge-all",
                           confirm="Delete every dead letter of this queue for good?"))
    body = (f'<h1>Queue <code>{esc(name)}</code></h1>{summary}'
            f'<section id="dead" class="live"><h2>dead letters</h2>'
            '<p class="hint">Messages the transport set aside: delivered more than '
            "max_deliveries times, rejected without requeue, or malformed. Requeue puts one "
            "back, visible now, with its delivery count reset.</p>"
            f'<div class="controls">{bulk}</div>{more}'
            + table(["id", "reason", "task", "task id", "deliveries", "dead since",
                     "message", ""], _dead_rows(ctx, name, letters), cls="dead-letters",
                    empty="no dead letters") + "</section>")
    return ctx.page(f"Queue {name}", "queues", body)


async def dead_letter_action(request: Request) -> Response:
    """POST /queues/{name}/dead-letters/{requeue|purge} (``ids``, or all without)."""
    console = request.app.state.console
    form = await checked_form(request, console.csrf, console.read_only)
    if isinstance(form, Response):
        return form
    name, action = request.path_params["name"], request.path_params["action"]
    page = f"/queues/{path_part(name)}"
    try:
        ids = [int(v) for v in form.getlist("ids")] or None
    except ValueError:
        return console.context(request).error(400, "ids must be message ids (numbers)")
    call = {"requeue": queues.requeue_dead_letters, "purge": queues.purge_dead_letters}.get(
        action)
    if call is None:
        return console.context(request).error(404, f"no such action {action!r}")
    try:
        moved = await run_in_threadpool(call, console.db, name, ids)
    except QueueNameError as exc:
        return console.context(request).error(404, str(exc))
    done = "requeued" if action == "requeue" else "deleted"
    return back(request, page, f"{moved} dead letter(s) {done}")
