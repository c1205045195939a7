"""``swf-celery doctor``: stuck runs and PostgreSQL's health, each finding with its remedy."""

from __future__ import annotations

import click

from swf_celery.cli._common import database_option, database_url, emit, json_option

#: How each severity is shown (and coloured) in the human output.
_STYLE = {"error": ("ERROR", "red"), "warning": ("WARN", "yellow"), "info": ("info", None),
          "ok": ("ok", "green")}


@click.command("doctor")
@database_option
@json_option
@click.option("--stalled-after", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds after which an open transaction, a silent listener, a run that "
                   "does not move or a message nobody takes is reported.")
@click.option("--visibility-timeout", type=click.FloatRange(min=1), default=None,
              help="The workers' visibility_timeout (default: the Celery app's of `celery -A "
                   "APP swf doctor`, else 60).")
@click.option("--quiet", "-q", is_flag=True, help="Print only warnings and errors.")
def doctor_command(database: str | None, as_json: bool, stalled_after: float,
                   visibility_timeout: float | None, quiet: bool) -> None:
    """Explain stuck runs and check PostgreSQL for this workload.

    Exit status: 0 when nothing is worse than info, 1 for a warning, 2 for an error.
    """
    from swf_celery.ops.doctor import Limits, doctor

    ctx = click.get_current_context()
    if visibility_timeout is None:
        app = getattr(ctx.obj, "app", None)
        options = (app.conf.broker_transport_options or {}) if app is not None else {}
        visibility_timeout = float(options.get("visibility_timeout") or 60.0)
    report = doctor(database_url(database, require_schema=False),
                    limits=Limits(stalled_after=stalled_after,
                                  visibility_timeout=visibility_timeout))

    def human() -> None:
        for finding in report.findings:
            if quiet and finding.rank < 2:
                continue
            label, colour = _STYLE[finding.severity]
            click.echo(click.style(f"{label:<5}", fg=colour, bold=colour == "red")
                       + f" {finding.check:<20} {finding.summary}")
            if finding.severity in ("warning", "error"):
                click.echo(f"{'':<26}-> {finding.remedy}")
        stuck = len(report.stalled_runs)
        click.echo(f"{report.severity}: {len(report.findings)} findings, {stuck} runs not "
                   "moving")

    emit(report.as_dict(), as_json, human)
    ctx.exit(report.exit_status)
