"""A run's page: summary, controls, the DAG (SVG), steps, attempts timeline, step details."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

import swf_celery as swf
from swf_celery.db import Database, load_queries
from swf_celery.errors import RunNotFound
from swf_celery.ui import dag_svg, health
from swf_celery.ui.layout import (
    Context,
    badge,
    capped,
    esc,
    parse_time,
    path_part,
    seconds,
    table,
    when,
)
from swf_celery.ui.runs import run_link
from swf_celery.workflows.coordinator import TERMINAL

QUERIES = load_queries(__package__)
#: Characters of a step's input, output or error shown (the page says what was cut).
STEP_CAP = 65536
ROW_H, BAR_W, LABEL_W = 22, 640, 220


def attempts(db: Database, run_id: str) -> list[tuple[Any, ...]]:
    """The run's step tasks (latest attempt of each), oldest first."""
    with db.connection() as conn:
        return conn.execute(QUERIES["run_attempts"], {"run_id": run_id}).fetchall()


def step_detail(db: Database, run_id: str, step: str) -> dict[str, Any] | None:
    """A step's status, error, output and input (run input and dependency outputs), cut."""
    with db.connection() as conn:
        row = conn.execute(QUERIES["step_detail"],
                           {"run_id": run_id, "step": step, "cap": STEP_CAP}).fetchone()
        if row is None:
            return None
        name, status, error, out, out_len, run_in, run_in_len, deps = row
        dep_rows = conn.execute(QUERIES["dependency_outputs"],
                                {"run_id": run_id, "names": list(deps), "cap": STEP_CAP}
                                ).fetchall()
    return {"name": name, "status": status, "error": error, "output": (out, out_len),
            "run_input": (run_in, run_in_len), "deps": dep_rows}


def timeline(rows: list[tuple[Any, ...]], start: datetime) -> str:
    """Attempts as bars on one time axis (SVG, no inline styles)."""
    if not rows:
        return ""
    now = datetime.now(timezone.utc)
    ends = [r[9] or (now if r[8] else r[7]) for r in rows]
    span = max((e - start).total_seconds() for e in ends) or 1.0
    height = ROW_H * len(rows) + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{LABEL_W + BAR_W + 8}"'
           f' height="{height}" role="img" aria-label="attempts over time">']
    for i, row in enumerate(rows):
        step, index, _tid, attempt, status = row[:5]
        queued, started = row[7], row[8]
        y = i * ROW_H + 4
        label = step + (f"[{index}]" if index else "") + (f" #{attempt}" if attempt > 1 else "")
        out.append(f'<text x="0" y="{y + 14}" class="label">{esc(label[:30])}</text>')
        x0 = LABEL_W + BAR_W * (queued - start).total_seconds() / span
        if started is not None:  # waiting in the queue, then running
            xs = LABEL_W + BAR_W * (started - start).total_seconds() / span
            out.append(f'<rect class="wait" x="{x0:.1f}" y="{y + 5}" '
                       f'width="{max(xs - x0, 0.5):.1f}" height="8"/>')
            x0 = xs
        xe = LABEL_W + BAR_W * (ends[i] - start).total_seconds() / span
        out.append(f'<rect class="bar state-{esc(status)}" data-step="{esc(step)}" '
                   f'x="{x0:.1f}" y="{y + 2}" width="{max(xe - x0, 2):.1f}" height="14" rx="3">'
                   f"<title>{esc(label)}: {esc(status)}</title></rect>")
    out.append(f'<text x="{LABEL_W}" y="{height - 4}" class="axis">0 s</text>'
               f'<text x="{LABEL_W + BAR_W}" y="{height - 4}" class="axis end">'
               f"{esc(seconds(span))}</text></svg>")
    return "".join(out)


def controls(ctx: Context, status: str, run_id: str) -> str:
    """Pause / resume / cancel (with reason) / retry, as the run's status allows."""
    if ctx.read_only:
        return ""
    base = f"/runs/{run_id}"
    parts = []
    if status == "in_progress":
        parts.append(ctx.form(f"{base}/pause", "pause", cls="pause"))
    if status == "paused":
        parts.append(ctx.form(f"{base}/resume", "resume", cls="resume"))
    if status in ("in_progress", "paused"):
        parts.append(ctx.form(
            f"{base}/cancel", "cancel", cls="cancel", confirm="Cancel this run?",
            fields='<input name="reason" placeholder="reason" maxlength="500" '
                   'aria-label="reason">'))
    if status in ("failed", "cancelled"):
        parts.append(ctx.form(f"{base}/retry", "retry", cls="retry"))
        parts.append(ctx.form(f"{base}/retry", "retry all steps", cls="retry-all",
                              fields='<input type="hidden" name="reset_all" value="1">'))
    return "".join(parts)


def _detail_html(ctx: Context, d: dict[str, Any]) -> str:
    deps = "".join(f"<h4>from {esc(name)}</h4>{capped(text, length, STEP_CAP)}"
                   for name, text, length in d["deps"])
    error = f'<h3>error</h3><pre class="error">{esc(d["error"])}</pre>' if d["error"] else ""
    return (f'<section id="step" class="detail"><h2>step {esc(d["name"])} '
            f'{badge(d["status"])}</h2>{error}'
            f'<h3>output</h3>{capped(d["output"][0], d["output"][1], STEP_CAP)}'
            f'<h3>input</h3><h4>run input</h4>'
            f'{capped(d["run_input"][0], d["run_input"][1], STEP_CAP)}{deps}'
            "</section>")


def render(ctx: Context, status: Any, rows: list[tuple[Any, ...]],
           detail: dict[str, Any] | None, selected: str | None, doctor: str = "") -> str:
    """The run page's HTML."""
    rid = status.run_id
    deps = {s.name: s.depends_on for s in status.steps}
    colours = {s.name: s.status for s in status.steps}
    svg = dag_svg.render(deps, colours, link=ctx.url(f"/runs/{path_part(rid)}"),
                         selected=selected)
    lineage = " ".join(x for x in (
        run_link(ctx, status.retry_of, f"retry of {(status.retry_of or '')[:8]}"),
        run_link(ctx, status.retried_by, f"retried by {(status.retried_by or '')[:8]}"),
        run_link(ctx, status.replay_of, f"replay of {(status.replay_of or '')[:8]}"),
        *(run_link(ctx, r, f"replayed by {r[:8]}") for r in status.replays)) if x)
    error = ""
    if status.error:
        where = f" at {esc(status.failed_step)}" if status.failed_step else ""
        error = f'<p class="error">error{where}: {esc(status.error)}</p>'
    finished = f" \u00b7 finished {when(status.finished_at)}" if status.finished_at else ""
    summary = (f'<section id="summary" class="live"><h1>{esc(status.workflow_slug)} '
               f'<span id="run-status">{badge(status.status)}</span></h1>'
               f'<p class="meta"><code>{esc(rid)}</code> \u00b7 '
               f'<span id="progress">{status.completed_steps}/{status.total_steps} steps '
               f'({status.percentage:g}%)</span> \u00b7 started {when(status.inserted_at)}'
               f'{finished}'
               f'</p><p class="lineage">{lineage}</p>{error}</section>')
    step_rows = []
    for s in status.steps:
        where = (s.queue or "") if s.execution == "distributed" else "local"
        tasks = "" if s.task_count is None else f"{s.completed_tasks}/{s.task_count}"
        step_rows.append([
            f'<a href="?step={esc(path_part(s.name))}#step">{esc(s.name)}</a>',
            f'<span class="step-status" data-step="{esc(s.name)}">{badge(s.status)}</span>',
            esc(where), esc(tasks), str(s.attempts), when(s.started_at), when(s.completed_at),
            esc((s.error or "")[:200])])
    # The worker is known when the attempt's result row names it (swf:// result backend).
    workers = any(r[11] for r in rows)
    attempt_rows = [[esc(r[0]) + (f"[{r[1]}]" if r[1] else ""), str(r[3]), badge(r[4]),
                     esc(r[6] or "local")] + ([esc(r[11] or "")] if workers else [])
                    + [when(r[7]), when(r[8]), when(r[9]), seconds(r[10]), str(max(r[3] - 1, 0)),
                       esc((r[12] or "")[:160])] for r in rows]
    started = parse_time(status.inserted_at)
    return (summary
            + f'<section id="controls" class="live controls">{controls(ctx, status.status, rid)}'
              "</section>"
            + doctor
            + f'<section id="graph" class="live"><h2>graph</h2><div class="dag-wrap">{svg}</div>'
              "</section>"
            + '<section id="steps" class="live"><h2>steps</h2>'
            + table(["step", "status", "queue", "tasks", "attempts", "started", "completed",
                     "error"], step_rows, cls="steps") + "</section>"
            + '<section id="attempts" class="live"><h2>attempts</h2>'
            + timeline(rows, started)
            + table(["step", "attempt", "status", "queue"] + (["worker"] if workers else [])
                    + ["queued", "started", "ended", "duration", "retries", "error"],
                    attempt_rows, cls="attempts",
                    empty="no attempt yet") + "</section>"
            + (_detail_html(ctx, detail) if detail else ""))


async def run_page(request: Request) -> Response:
    """GET /runs/{run_id} (``?step=NAME`` opens a step's details)."""
    console = request.app.state.console
    ctx = console.context(request)
    run_id = request.path_params["run_id"]
    selected = request.query_params.get("step") or None
    try:
        status = await run_in_threadpool(swf.get_run_status, run_id, console.db)
    except RunNotFound as exc:
        return ctx.error(404, str(exc))
    rows = await run_in_threadpool(attempts, console.db, status.run_id)
    detail = None
    if selected is not None:
        detail = await run_in_threadpool(step_detail, console.db, status.run_id, selected)
        if detail is None:
            return ctx.error(404, f"run {status.run_id} has no step {selected!r}")
    # An active run's page says why it is not moving (swf-celery doctor's explanation).
    doctor = ("" if status.status in TERMINAL else
              await run_in_threadpool(health.run_explanation, console.db, status.run_id))
    live = {"events": ctx.url(f"/runs/{path_part(status.run_id)}/events"), "refresh": "run",
            "run": status.run_id, "steps": str(status.total_steps)}
    if status.status in TERMINAL:
        live["finished"] = "1"
    return ctx.page(f"{status.workflow_slug} {status.run_id[:8]}", "runs",
                    render(ctx, status, rows, detail, selected, doctor), live=live)
