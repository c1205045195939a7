"""Stored flows (list, inspect, delete) and goal task graphs (list, inspect, approve)."""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

import swf_celery as swf
from swf_celery.errors import SwfError
from swf_celery.ui import dag_svg
from swf_celery.ui.forms import back, checked_form
from swf_celery.ui.layout import badge, capped, esc, path_part, qs, table, when

GRAPH_CAP = 65536


async def flows_page(request: Request) -> Response:
    """GET /flows: every stored flow."""
    console = request.app.state.console
    ctx = console.context(request)
    flows = await run_in_threadpool(swf.FlowBuilder.list_flows, console.db)
    rows = [[f'<a href="{esc(ctx.url("/flows/" + path_part(f["workflow_id"])))}">'
             f'{esc(f["workflow_id"])}</a>', "dynamic" if f["dynamic"] else "class",
             str(f["step_count"]), when(f["created_at"]),
             f'<a href="{esc(ctx.url("/"))}{qs(workflow=f["workflow_id"])}">runs</a>']
            for f in flows]
    body = "<h1>Flows</h1>" + table(["flow", "kind", "steps", "created", ""], rows,
                                    empty="no flows yet")
    return ctx.page("Flows", "flows", body)


def _options(step: dict[str, Any]) -> str:
    options = {k: v for k, v in step.items() if k not in ("name", "depends_on")}
    return json.dumps(options, default=str)[:300]


async def flow_page(request: Request) -> Response:
    """GET /flows/{slug}: a flow's graph and steps."""
    console = request.app.state.console
    ctx = console.context(request)
    slug = request.path_params["slug"]
    try:
        flow = await run_in_threadpool(swf.FlowBuilder.get_flow, slug, console.db)
    except SwfError as exc:
        return ctx.error(404, str(exc))
    stats = await run_in_threadpool(
        lambda: swf.workflow_statistics(console.db, workflow_slug=slug, window=86400))
    deps = {s["name"]: s["depends_on"] for s in flow["steps"]}
    svg = dag_svg.render(deps) if deps else '<p class="empty">no steps</p>'
    rows = [[esc(s["name"]), esc(", ".join(s["depends_on"])), f"<code>{esc(_options(s))}</code>"]
            for s in flow["steps"]]
    delete = ""
    if flow["dynamic"]:
        delete = ctx.form(f"/flows/{path_part(slug)}/delete", "delete flow", cls="purge",
                          confirm="Delete this flow? Finished runs are kept.")
    body = (f'<h1>Flow <code>{esc(slug)}</code></h1><p class="meta">'
            f'{"dynamic" if flow["dynamic"] else "class"} \u00b7 created '
            f'{when(flow["created_at"])} \u00b7 <a href="{esc(ctx.url("/"))}'
            f'{qs(workflow=slug)}">runs</a></p><div class="controls">{delete}</div>'
            f'<div class="dag-wrap">{svg}</div>'
            + table(["step", "depends on", "options"], rows) + _statistics(stats))
    return ctx.page(f"Flow {slug}", "flows", body)


def _statistics(found: list[Any]) -> str:
    """The flow's execution statistics over the last 24 hours (swf.workflow_statistics)."""
    def ms(value: float | None) -> str:
        return "" if value is None else f"{value:,.0f}"

    def rate(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.1f}%"

    if not found:
        return '<h2>Last 24 hours</h2><p class="empty">no runs started in the last 24 hours</p>'
    flow = found[0]
    head = (f'<h2>Last 24 hours</h2><p class="meta">{flow.runs} runs · success '
            f'{rate(flow.success_rate)} · p50 {ms(flow.p50_ms)} ms · p95 '
            f'{ms(flow.p95_ms)} ms · max {ms(flow.max_ms)} ms</p>')
    rows = [[esc(s.name), str(s.runs), rate(s.success_rate), str(s.skipped), str(s.attempts),
             ms(s.p50_ms), ms(s.p95_ms), ms(s.max_ms), ms(s.queue_wait_p50_ms),
             ms(s.queue_wait_p95_ms)] for s in flow.steps]
    return head + table(["step", "runs", "success", "skipped", "attempts", "p50 ms",
                         "p95 ms", "max ms", "wait p50 ms", "wait p95 ms"], rows)


async def flow_delete(request: Request) -> Response:
    """POST /flows/{slug}/delete (refused while runs of it are active)."""
    console = request.app.state.console
    form = await checked_form(request, console.csrf, console.read_only)
    if isinstance(form, Response):
        return form
    slug = request.path_params["slug"]
    try:
        await run_in_threadpool(swf.FlowBuilder.delete_flow, slug, console.db)
    except SwfError as exc:
        return back(request, f"/flows/{path_part(slug)}", f"delete refused: {exc}")
    return back(request, "/flows", f"flow {slug} deleted")


async def goals_page(request: Request) -> Response:
    """GET /goals: decomposed goal task graphs, newest first."""
    console = request.app.state.console
    ctx = console.context(request)
    graphs = await run_in_threadpool(lambda: swf.Orchestrator.list_task_graphs(console.db))
    rows = [[f'<a href="{esc(ctx.url("/goals/" + str(g["id"])))}">{esc(str(g["id"])[:8])}</a>',
             esc(str(g["goal"])[:160]), badge(str(g["status"])), str(len(g["flat_tasks"] or [])),
             when(g["decomposed_at"]), when(g["approved_at"]),
             f'<a href="{esc(ctx.url("/runs/" + str(g["last_run_id"])))}">last run</a>'
             if g["last_run_id"] else ""] for g in graphs]
    body = "<h1>Goals</h1>" + table(["graph", "goal", "status", "tasks", "decomposed",
                                     "approved", ""], rows, empty="no goals decomposed yet")
    return ctx.page("Goals", "goals", body)


def _graph_deps(graph: dict[str, Any]) -> dict[str, list[str]]:
    return {str(t["id"]): [str(d) for d in t.get("depends_on") or []]
            for t in graph.get("flat_tasks") or []}


async def goal_page(request: Request) -> Response:
    """GET /goals/{graph_id}: the graph drawn, its tasks, and approve."""
    console = request.app.state.console
    ctx = console.context(request)
    gid = request.path_params["graph_id"]
    try:
        graph = await run_in_threadpool(swf.Orchestrator.get_task_graph, gid, console.db)
    except SwfError as exc:
        return ctx.error(404, str(exc))
    deps = _graph_deps(graph)
    svg = dag_svg.render(deps) if deps else '<p class="empty">no tasks</p>'
    approve = "" if graph["approved_at"] else ctx.form(f"/goals/{gid}/approve", "approve",
                                                       cls="approve")
    text = json.dumps(graph["tasks"], indent=2, default=str)
    body = (f'<h1>Goal {badge(str(graph["status"]))}</h1><p class="goal">{esc(graph["goal"])}'
            f'</p><div class="controls">{approve}</div><div class="dag-wrap">{svg}</div>'
            f"<h2>tasks as decomposed</h2>{capped(text[:GRAPH_CAP], len(text), GRAPH_CAP)}")
    return ctx.page("Goal", "goals", body)


async def goal_approve(request: Request) -> Response:
    """POST /goals/{graph_id}/approve."""
    console = request.app.state.console
    form = await checked_form(request, console.csrf, console.read_only)
    if isinstance(form, Response):
        return form
    gid = request.path_params["graph_id"]
    try:
        await run_in_threadpool(swf.Orchestrator.approve_task_graph, gid, console.db)
    except SwfError as exc:
        return back(request, f"/goals/{gid}", f"approve refused: {exc}")
    return back(request, f"/goals/{gid}", "approved")
