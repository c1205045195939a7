"""Command-line views and controls of workflow runs: ``runs``, ``pause``, ``resume``, ``cancel``,
``retry``.

``runs list``, ``runs show RUN_ID`` (per-step table), ``runs watch RUN_ID`` (a live
progress bar driven by the engine's NOTIFY events; exits when the run ends, with status 1
unless it completed), ``runs stats`` (per flow and step: runs, success, attempts,
durations, queue wait), ``pause``, ``resume``, ``cancel``, ``retry``, ``signal``. Human output by
default, ``--json`` for scripts; errors are one line and a non-zero exit.
"""

from __future__ import annotations

from typing import Any

import click

from swf_celery.cli._common import SwfGroup, database_option, database_url, emit

_STATUS_STYLE = {"completed": "green", "failed": "red", "cancelled": "yellow",
                 "paused": "cyan", "in_progress": "blue", "started": "blue",
                 "ready": "cyan", "created": "dim", "skipped": "dim", "waiting": "cyan"}


def _styled(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status}[/{style}]" if style else status


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


@click.group("runs", cls=SwfGroup)
def runs() -> None:
    """List, show and watch workflow runs."""


@runs.command("list")
@database_option
@click.option("--status", "status", default=None,
              help="in_progress, paused, completed, failed, cancelled (or 'started').")
@click.option("--workflow", "workflow_slug", default=None, help="Only runs of this workflow.")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--order", type=click.Choice(["asc", "desc"]), default="desc", show_default=True,
              help="By start time.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def runs_list(database: str | None, status: str | None, workflow_slug: str | None,
              limit: int, offset: int, order: str, as_json: bool) -> None:
    """List runs, newest first."""
    from dataclasses import asdict

    from swf_celery.workflows.lifecycle import list_workflow_runs

    found = list_workflow_runs(database_url(database), status=status,
                               workflow_slug=workflow_slug, limit=limit, offset=offset,
                               order_by=(order, "inserted_at"))

    def human() -> None:
        from rich.table import Table

        table = Table("run", "workflow", "status", "steps", "started", "error")
        for r in found:
            table.add_row(r.run_id, r.workflow_slug, _styled(r.status),
                          f"{r.completed_steps}/{r.total_steps}",
                          f"{r.inserted_at:%Y-%m-%d %H:%M:%S}", r.error or "")
        _console().print(table)

    emit([asdict(r) for r in found], as_json, human)


@runs.command("show")
@click.argument("run_id")
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def runs_show(run_id: str, database: str | None, as_json: bool) -> None:
    """Show a run and a table of its steps."""
    from swf_celery.workflows.lifecycle import get_run_status

    status = get_run_status(run_id, database_url(database))

    def human() -> None:
        from rich.table import Table

        console = _console()
        console.print(f"run {status.run_id}  {status.workflow_slug}  {_styled(status.status)}"
                      f"  {status.completed_steps}/{status.total_steps} steps "
                      f"({status.percentage:g}%)")
        if status.retry_of:
            console.print(f"retry of {status.retry_of}")
        if status.retried_by:
            console.print(f"retried by {status.retried_by}")
        if status.replay_of:
            console.print(f"replay of {status.replay_of}")
        if status.replays:
            console.print(f"replayed by {', '.join(status.replays)}")
        if status.error:
            where = f" at {status.failed_step}" if status.failed_step else ""
            console.print(f"error{where}: {status.error}")
        table = Table("step", "status", "where", "tasks", "attempts", "resources", "error")
        for s in status.steps:
            where = (s.queue or "") if s.execution == "distributed" else "local"
            tasks = "" if s.task_count is None else f"{s.completed_tasks}/{s.task_count}"
            resources = ", ".join(f"{k}={v}" for k, v in s.resources.items())
            table.add_row(s.name, _styled(s.status), where, tasks, str(s.attempts),
                          resources, s.error or "")
        console.print(table)

    emit(status.to_dict(), as_json, human)


@runs.command("stats")
@database_option
@click.option("--workflow", "workflow_slug", default=None, help="Only this workflow.")
@click.option("--window", type=click.FloatRange(min=0, min_open=True), default=3600.0,
              show_default=True, help="Seconds back from now: runs started since then.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def runs_stats(database: str | None, workflow_slug: str | None, window: float,
               as_json: bool) -> None:
    """Execution statistics per flow and per step over a time window."""
    from swf_celery.workflows.statistics import workflow_statistics

    found = workflow_statistics(database_url(database), workflow_slug=workflow_slug,
                                window=window)

    def ms(value: float | None) -> str:
        return "" if value is None else f"{value:,.0f}"

    def rate(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.1f}%"

    def human() -> None:
        from rich.table import Table

        console = _console()
        if not found:
            console.print(f"no runs started in the last {window:g} s")
        for flow in found:
            console.print(f"[bold]{flow.workflow_slug}[/bold]  {flow.runs} runs  "
                          f"success {rate(flow.success_rate)}  p50 {ms(flow.p50_ms)} ms  "
                          f"p95 {ms(flow.p95_ms)} ms  max {ms(flow.max_ms)} ms"
                          + (f"  ({flow.active} active)" if flow.active else ""))
            table = Table("step", "runs", "success", "skipped", "attempts", "p50 ms",
                          "p95 ms", "max ms", "wait p50 ms", "wait p95 ms")
            for s in flow.steps:
                table.add_row(s.name, str(s.runs), rate(s.success_rate), str(s.skipped),
                              str(s.attempts), ms(s.p50_ms), ms(s.p95_ms), ms(s.max_ms),
                              ms(s.queue_wait_p50_ms), ms(s.queue_wait_p95_ms))
            console.print(table)

    emit([f.to_dict() for f in found], as_json, human)


@runs.command("watch")
@click.argument("run_id")
@database_option
def runs_watch(run_id: str, database: str | None) -> None:
    """Show a live progress bar until the run ends (exit 1 unless it completed)."""
    from rich.progress import BarColumn, Progress, TextColumn

    from swf_celery.messaging.channels import WORKFLOW_EVENTS
    from swf_celery.messaging.listen import listen
    from swf_celery.workflows.lifecycle import get_run_status

    url = database_url(database)
    listener = listen(WORKFLOW_EVENTS, url)  # before the first read: no event is missed
    try:
        status = get_run_status(run_id, url)
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} steps"),
                      console=_console()) as progress:
            bar = progress.add_task(status.status, total=status.total_steps,
                                    completed=status.completed_steps)
            while status.status in ("in_progress", "paused"):
                note = listener.get(timeout=5.0)
                if note is not None and note.payload is not None:
                    event = note.json()
                    if not isinstance(event, dict) or event.get("run_id") != status.run_id:
                        continue
                status = get_run_status(run_id, url)
                progress.update(bar, completed=status.completed_steps,
                                description=status.status)
    finally:
        listener.close()
    line = f"run {status.run_id} {status.status}"
    if status.error:
        line += f": {status.error}"
    click.echo(line)
    if status.status != "completed":
        raise SystemExit(1)


def _control(name: str, help_text: str) -> Any:
    def decorate(func: Any) -> Any:
        func = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)
        func = database_option(func)
        func = click.argument("run_id")(func)
        return click.command(name, help=help_text)(func)

    return decorate


def _report(run_id: str, status: str, as_json: bool, extra: str = "") -> None:
    emit({"run_id": run_id, "status": status}, as_json,
          lambda: click.echo(f"run {run_id} {status}{extra}"))


@_control("pause", "Pause a run: no new step starts; running steps finish.")
def pause_command(run_id: str, database: str | None, as_json: bool) -> None:
    from swf_celery.workflows.lifecycle import pause_workflow_run

    pause_workflow_run(run_id, database_url(database))
    _report(run_id, "paused", as_json)


@_control("resume", "Resume a paused run.")
def resume_command(run_id: str, database: str | None, as_json: bool) -> None:
    from swf_celery.workflows.lifecycle import resume_workflow_run

    resume_workflow_run(run_id, database_url(database))
    _report(run_id, "in_progress", as_json)


@click.option("--force", is_flag=True, help="Mark a finished run cancelled too.")
@click.option("--reason", default=None, help="Recorded as the run's error.")
@_control("cancel", "Cancel a run: queued steps removed, running steps revoked.")
def cancel_command(run_id: str, database: str | None, as_json: bool, reason: str | None,
                   force: bool) -> None:
    from swf_celery.workflows.lifecycle import DEFAULT_CANCEL_REASON, cancel_workflow_run

    cancel_workflow_run(run_id, database_url(database),
                        reason=reason or DEFAULT_CANCEL_REASON, force=force)
    _report(run_id, "cancelled", as_json)


@click.argument("payload", default="null")
@click.argument("name")
@_control("signal", "Send the signal NAME (PAYLOAD: JSON, default null) to a run; its "
          "steps that wait for NAME start.")
def signal_command(run_id: str, database: str | None, as_json: bool, name: str,
                   payload: str) -> None:
    import json

    from swf_celery.workflows.lifecycle import signal

    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="PAYLOAD") from None
    started = signal(run_id, name, value, database_url(database))
    emit({"run_id": run_id, "signal": name, "started_steps": started}, as_json,
         lambda: click.echo(f"run {run_id}: signal {name!r} sent; {started} step(s) started"))


@click.option("--input", "new_input", default=None, help="A new run input (JSON).")
@click.option("--from", "from_step", required=True, help="The first step to run again.")
@_control("replay", "Replay a finished run from a step: a new run reusing every output "
          "not downstream of it; print the new run id (a run with local steps runs them "
          "here and the command waits, as retry does).")
def replay_command(run_id: str, database: str | None, as_json: bool, from_step: str,
                   new_input: str | None) -> None:
    import json

    from swf_celery.workflows.lifecycle import replay

    try:
        value = None if new_input is None else json.loads(new_input)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from None
    url = database_url(database)
    new_id = replay(run_id, from_step, value, url)
    _finish_new_run(new_id, {"replay_of": run_id}, url, as_json)


@click.option("--reset-all", is_flag=True, help="Run every step again.")
@_control("retry", "Retry a failed or cancelled run; print the new run id. A run with local "
          "steps runs them here, imported from where they live, and the command waits and "
          "prints the new run's outcome (exit 1 unless it completed).")
def retry_command(run_id: str, database: str | None, as_json: bool, reset_all: bool) -> None:
    from swf_celery.workflows.lifecycle import retry_failed_workflow

    url = database_url(database)
    new_id = retry_failed_workflow(run_id, url, reset_all=reset_all)
    _finish_new_run(new_id, {"retry_of": run_id}, url, as_json)


def _finish_new_run(new_id: str, origin: dict[str, str], url: str, as_json: bool) -> None:
    """Print a new run's id; one with local steps runs them here: wait and print its
    outcome (exit 1 unless it completed)."""
    from swf_celery.errors import WorkflowFailed
    from swf_celery.workflows.executor import Executor
    from swf_celery.workflows.lifecycle import get_run_status

    status = get_run_status(new_id, url)
    if not any(s.execution == "local" for s in status.steps):
        emit({"run_id": new_id, **origin, "status": status.status}, as_json,
             lambda: click.echo(new_id))
        return
    if not as_json:
        click.echo(f"{new_id}: running its local steps here until it ends", err=True)
    try:
        Executor.wait(new_id, url, timeout=None)
    except WorkflowFailed:
        pass
    status = get_run_status(new_id, url)
    line = f"run {new_id} {status.status}" + (f": {status.error}" if status.error else "")
    emit({"run_id": new_id, **origin, "status": status.status,
          "error": status.error, "output": status.output}, as_json, lambda: click.echo(line))
    if status.status != "completed":
        raise SystemExit(1)
