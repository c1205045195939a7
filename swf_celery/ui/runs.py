"""The runs list: filters (status, workflow, time), paging, counts by status, live."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from swf_celery.db import Database, load_queries
from swf_celery.errors import ArgumentError
from swf_celery.ui.layout import Context, badge, esc, parse_time, path_part, qs, table, when
from swf_celery.workflows.lifecycle import SEED_STATUSES, STATUSES

QUERIES = load_queries(__package__)
PAGE_SIZE = 50
#: The time filter's presets.
WINDOWS = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(days=1),
           "7d": timedelta(days=7), "30d": timedelta(days=30)}


@dataclass(frozen=True)
class RunFilter:
    """The list's filters, parsed and checked from the query string."""

    status: str | None
    workflow: str | None
    window: str | None
    since: datetime | None
    until: datetime | None
    page: int

    @property
    def statuses(self) -> list[str] | None:
        """The statuses to show (the seed's ``started`` means in progress or paused)."""
        if self.status is None:
            return None
        return list(SEED_STATUSES.get(self.status, (self.status,)))

    def params(self, **changes: Any) -> dict[str, Any]:
        """The filter as query parameters (``changes`` override)."""
        out = {"status": self.status, "workflow": self.workflow, "window": self.window,
               "from": self.since.isoformat() if self.since and not self.window else None,
               "to": self.until.isoformat() if self.until else None,
               "page": self.page if self.page > 1 else None}
        out.update(changes)
        return out


def _time(text: str | None, label: str) -> datetime | None:
    if not text:
        return None
    try:
        value = parse_time(text)
    except ValueError:
        raise ArgumentError(f"{label} must be a date or date and time (ISO 8601, e.g. "
                            f"2026-11-30 or 2026-11-30T14:00), not {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def parse_filter(request: Request) -> RunFilter:
    """The filters of a runs-list request; :class:`ArgumentError` names a bad one."""
    q = request.query_params
    status = q.get("status") or None
    if status is not None and status not in STATUSES and status not in SEED_STATUSES:
        raise ArgumentError(f"unknown status {status!r}: use one of "
                            f"{', '.join(STATUSES + tuple(SEED_STATUSES))}")
    window = q.get("window") or None
    if window is not None and window not in WINDOWS:
        raise ArgumentError(f"unknown time window {window!r}: use one of {', '.join(WINDOWS)}")
    since = (datetime.now(timezone.utc) - WINDOWS[window] if window
             else _time(q.get("from"), "from"))
    until = _time(q.get("to"), "to")
    try:
        page = max(1, int(q.get("page") or 1))
    except ValueError:
        raise ArgumentError(f"page must be a number, not {q.get('page')!r}") from None
    return RunFilter(status, q.get("workflow") or None, window, since, until, page)


def fetch(db: Database, flt: RunFilter) -> tuple[list[tuple[Any, ...]], dict[str, int],
                                                   list[str], bool]:
    """(runs of the page, counts by status, known workflows, is there a next page)."""
    params = {"statuses": flt.statuses, "slug": flt.workflow, "since": flt.since,
              "until": flt.until, "limit": PAGE_SIZE + 1, "offset": (flt.page - 1) * PAGE_SIZE}
    with db.connection() as conn:
        rows = conn.execute(QUERIES["list_runs"], params).fetchall()
        counts = dict(conn.execute(QUERIES["count_runs"], params).fetchall())
        slugs = [s for (s,) in conn.execute(QUERIES["workflow_slugs"])]
    return rows[:PAGE_SIZE], counts, slugs, len(rows) > PAGE_SIZE


def _select(name: str, options: list[tuple[str, str]], chosen: str | None) -> str:
    opts = "".join(f'<option value="{esc(v)}"{" selected" if v == (chosen or "") else ""}>'
                   f"{esc(label)}</option>" for v, label in options)
    return f'<select name="{esc(name)}" id="f-{esc(name)}">{opts}</select>'


def render(ctx: Context, flt: RunFilter, rows: list[tuple[Any, ...]], counts: dict[str, int],
           slugs: list[str], more: bool) -> str:
    """The list's HTML: filter form, counts, table, pager."""
    status_opts = [("", "any status")] + [(s, s) for s in STATUSES] + [("started", "started "
                                                                       "(in progress or paused)")]
    slug_opts = [("", "any workflow")] + [(s, s) for s in slugs]
    if flt.workflow and flt.workflow not in slugs:
        slug_opts.append((flt.workflow, flt.workflow))
    window_opts = [("", "any time")] + [(w, f"last {w}") for w in WINDOWS]
    form = (f'<form method="get" action="{esc(ctx.url("/"))}" class="filters">'
            f'<label>status {_select("status", status_opts, flt.status)}</label>'
            f'<label>workflow {_select("workflow", slug_opts, flt.workflow)}</label>'
            f'<label>started {_select("window", window_opts, flt.window)}</label>'
            f'<label>from <input name="from" type="text" placeholder="2026-11-30T14:00" value="'
            f'{esc(flt.since.isoformat() if flt.since and not flt.window else "")}"></label>'
            f'<label>to <input name="to" type="text" value="'
            f'{esc(flt.until.isoformat() if flt.until else "")}"></label>'
            '<button type="submit">filter</button></form>')
    total = sum(counts.values())
    chips = [f'<a class="count{" here" if not flt.status else ""}" '
             f'href="{esc(ctx.url("/"))}{qs(**flt.params(status=None, page=None))}">'
             f"all <b>{total}</b></a>"]
    for s in STATUSES:
        chips.append(f'<a class="count state-{s}{" here" if flt.status == s else ""}" '
                     f'data-status="{s}" href="{esc(ctx.url("/"))}'
                     f'{qs(**flt.params(status=s, page=None))}">{s} <b>{counts.get(s, 0)}</b></a>')
    body_rows = []
    for rid, slug, status, total_steps, done, error, failed, retry_of, ins, _upd, fin in rows:
        link = esc(ctx.url(f"/runs/{rid}"))
        lineage = (f'<a href="{esc(ctx.url(f"/runs/{retry_of}"))}">retry of '
                   f"{esc(retry_of[:8])}</a>") if retry_of else ""
        body_rows.append([
            f'<a href="{link}"><code>{esc(rid[:8])}</code></a>',
            f'<a href="{esc(ctx.url("/"))}{qs(workflow=slug)}">{esc(slug)}</a>',
            badge(status), f"{done}/{total_steps}", when(ins), when(fin),
            esc((f"{failed}: " if failed else "") + (error or "")[:200]), lineage])
    pager = []
    if flt.page > 1:
        pager.append(f'<a rel="prev" href="{esc(ctx.url("/"))}'
                     f'{qs(**flt.params(page=flt.page - 1))}">\u2190 newer</a>')
    pager.append(f"<span>page {flt.page}</span>")
    if more:
        pager.append(f'<a rel="next" href="{esc(ctx.url("/"))}'
                     f'{qs(**flt.params(page=flt.page + 1))}">older \u2192</a>')
    return (f'<h1>Runs</h1>{form}<section id="runs" class="live">'
            f'<nav class="counts">{"".join(chips)}</nav>'
            + table(["run", "workflow", "status", "steps", "started", "finished", "error",
                     "lineage"], body_rows, cls="runs", empty="no runs match these filters")
            + f'<nav class="pager">{"".join(pager)}</nav></section>')


async def runs_page(request: Request) -> Response:
    """GET / : the runs list."""
    console = request.app.state.console
    ctx = console.context(request)
    try:
        flt = parse_filter(request)
    except ArgumentError as exc:
        return ctx.error(400, str(exc))
    rows, counts, slugs, more = await run_in_threadpool(fetch, console.db, flt)
    return ctx.page("Runs", "runs", render(ctx, flt, rows, counts, slugs, more),
                    live={"events": ctx.url("/events"), "refresh": "runs"})


def run_link(ctx: Context, run_id: str | None, label: str) -> str:
    """A link to a run page (empty for ``None``)."""
    if not run_id:
        return ""
    return f'<a href="{esc(ctx.url("/runs/" + path_part(run_id)))}">{esc(label)}</a>'
