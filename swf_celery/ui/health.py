"""The health page (``GET /health``) and the doctor's explanation of a stuck run: what
``swf-celery doctor`` reports (:mod:`swf_celery.ops.doctor`), worst first, each finding with
its remedy. ``?stalled_after=SECONDS`` changes when a transaction, a listener or a run counts
as stuck (default 60)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from swf_celery.db import Database
from swf_celery.ops.doctor import Limits, doctor, explain_run
from swf_celery.ops.doctor_findings import Finding
from swf_celery.ui.layout import badge, esc, table

#: The most ``stalled_after`` the page accepts (a day).
MAX_STALLED_AFTER = 86400.0


def findings_table(findings: list[Finding] | tuple[Finding, ...], *, empty: str) -> str:
    """Findings as a table: severity, check, subject, what was found and what to do."""
    rows = [[badge(f.severity), esc(f.check), esc(f.subject), esc(f.summary),
             esc(f.remedy) if f.rank >= 2 else f'<span class="muted">{esc(f.remedy)}</span>']
            for f in findings]
    return table(["severity", "check", "about", "found", "what to do"], rows, cls="findings",
                 empty=empty)


def run_explanation(db: Database, run_id: str) -> str:
    """The doctor's section on an active run's page: why it is (or is not) moving."""
    findings = explain_run(run_id, db, limits=Limits(stalled_after=0))
    return ('<section id="doctor" class="doctor"><h2>why it is not moving</h2>'
            + findings_table(findings, empty="nothing holds this run")
            + "</section>")


async def health_page(request: Request) -> Response:
    """GET /health: the doctor's report."""
    console = request.app.state.console
    ctx = console.context(request)
    raw = request.query_params.get("stalled_after", "60")
    try:
        stalled_after = float(raw)
    except ValueError:
        stalled_after = -1.0
    if not 0 <= stalled_after <= MAX_STALLED_AFTER:
        return ctx.error(400, f"stalled_after must be seconds from 0 to {MAX_STALLED_AFTER:g}, "
                              f"not {raw!r}")
    report = await run_in_threadpool(doctor, console.db,
                                     limits=Limits(stalled_after=stalled_after))
    counts = {s: sum(1 for f in report.findings if f.severity == s)
              for s in ("error", "warning", "info", "ok")}
    summary = " \u00b7 ".join(f"{n} {s}" for s, n in counts.items() if n)
    body = (f'<section id="health"><h1>health {badge(report.severity)}</h1>'
            f'<p class="meta">{esc(summary)} \u00b7 {len(report.stalled_runs)} runs not '
            f"moving for {stalled_after:g} s \u00b7 the same as <code>swf-celery doctor</code>"
            "</p>" + findings_table(report.findings, empty="nothing found") + "</section>")
    return ctx.page("health", "health", body)
