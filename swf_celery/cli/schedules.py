"""``swf-celery schedules``: the beat schedule in PostgreSQL, listed and edited while beat runs.

``list``, ``show NAME`` (with its latest ticks), ``add NAME --task T --every 30 | --cron
'*/5 * * * *'``, ``update``, ``pause``, ``resume``, ``delete`` and ``import`` (a shelve
schedule file or django-celery-beat's tables). Beat processes see each change at their next
tick. Cron text is checked by Celery's ``crontab``; invalid text is refused in one line.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from swf_celery.cli._common import SwfGroup, database_option, database_url, emit, json_option
from swf_celery.errors import ScheduleError


@click.group("schedules", cls=SwfGroup)
def schedules() -> None:
    """List and edit the beat schedule (celery beat -S swf_celery.schedules.Scheduler)."""


def _entry_dict(entry: Any) -> dict[str, Any]:
    data = asdict(entry)
    data["schedule_text"] = entry.schedule_text
    return data


def _print_entries(found: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "runs", "schedule", "next run", "last run", "last task/run",
                  "state", "paused")
    for e in found:
        last = f"{e.last_run_at:%Y-%m-%d %H:%M:%S}" if e.last_run_at else ""
        table.add_row(e.name, e.target, e.schedule_text, f"{e.next_run_at:%Y-%m-%d %H:%M:%S}",
                      last, e.last_task_id or e.last_run_id or "", e.last_state or "",
                      "yes" if e.paused else "")
    Console(highlight=False).print(table)


@schedules.command("list")
@database_option
@json_option
def list_command(database: str | None, as_json: bool) -> None:
    """Every entry: its schedule, next run, last run with its task id and state."""
    from swf_celery import schedules as api

    found = api.list_entries(database_url(database))
    emit([_entry_dict(e) for e in found], as_json, lambda: _print_entries(found))


@schedules.command("show")
@click.argument("name")
@click.option("--ticks", "limit", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of its latest ticks to show.")
@database_option
@json_option
def show_command(name: str, limit: int, database: str | None, as_json: bool) -> None:
    """One entry and its latest ticks."""
    from swf_celery import schedules as api

    url = database_url(database)
    entry = api.get(name, url)
    recent = api.ticks(name, limit, url)

    def human() -> None:
        _print_entries([entry])
        for t in recent:
            click.echo(f"  {t['tick_at']:%Y-%m-%d %H:%M:%S}  {t['outcome']:<8} "
                       f"{t['task_id'] or t['run_id'] or ''}  missed={t['missed']}  "
                       f"beat={t['beat']}")

    emit({**_entry_dict(entry), "ticks": recent}, as_json, human)


def _definition(task: str | None, workflow: str | None, every: float | None, cron: str | None,
                args: str | None, kwargs: str | None, options: str | None, missed: str | None,
                max_missed: int | None, skip_if_running: bool | None) -> dict[str, Any]:
    if every is not None and cron is not None:
        raise ScheduleError("give --every or --cron, not both")
    given: dict[str, Any] = {}
    if task is not None:
        given["task"] = task
    if workflow is not None:
        given["workflow"] = workflow
    if every is not None:
        given["schedule"] = every
    if cron is not None:
        given["schedule"] = cron
    for key, text in (("args", args), ("kwargs" if workflow is None else "input", kwargs),
                      ("options", options)):
        if text is not None:
            try:
                given[key] = json.loads(text)
            except ValueError as exc:
                raise ScheduleError(f"--{key if key != 'input' else 'kwargs'} is not JSON: "
                                    f"{exc}") from None
    if missed is not None:
        given["missed"] = missed
    if max_missed is not None:
        given["max_missed"] = max_missed
    if skip_if_running is not None:
        given["skip_if_running"] = skip_if_running
    return given


def _definition_options(func: Any) -> Any:
    for option in reversed([
        click.option("--task", default=None, help="The Celery task's name."),
        click.option("--workflow", default=None,
                     help="A workflow to start instead, as module:Class."),
        click.option("--every", type=float, default=None, help="An interval in seconds."),
        click.option("--cron", default=None, help="Cron text: '*/5 * * * *'."),
        click.option("--args", default=None, help="JSON list of positional arguments."),
        click.option("--kwargs", default=None,
                     help="JSON object of keyword arguments (a workflow's input)."),
        click.option("--options", default=None,
                     help='JSON object of apply_async options ({"queue": "gpu"}).'),
        click.option("--missed", type=click.Choice(["once", "all", "skip"]), default=None,
                     help="Missed-tick policy (default once)."),
        click.option("--max-missed", type=click.IntRange(1, 10_000), default=None,
                     help="With --missed all: most missed ticks run."),
        click.option("--skip-if-running/--no-skip-if-running", default=None,
                     help="A workflow's tick is skipped while its previous run runs."),
    ]):
        func = option(func)
    return func


@schedules.command("add")
@click.argument("name")
@_definition_options
@database_option
def add_command(name: str, task: str | None, workflow: str | None, every: float | None,
                cron: str | None, args: str | None, kwargs: str | None, options: str | None,
                missed: str | None, max_missed: int | None, skip_if_running: bool | None,
                database: str | None) -> None:
    """Add entry NAME (a task or a workflow, every N seconds or on cron text)."""
    from swf_celery.schedules import store

    given = _definition(task, workflow, every, cron, args, kwargs, options, missed,
                        max_missed, skip_if_running)
    url = database_url(database)
    if store._find(name, url) is not None:
        raise ScheduleError(f"schedule entry {name!r} exists: use `schedules update`")
    entry = store.put(name, given, repo=url)
    click.echo(f"added {entry.name}: {entry.target} {entry.schedule_text}, next run "
               f"{entry.next_run_at:%Y-%m-%d %H:%M:%S %Z}")


@schedules.command("update")
@click.argument("name")
@_definition_options
@database_option
def update_command(name: str, task: str | None, workflow: str | None, every: float | None,
                   cron: str | None, args: str | None, kwargs: str | None,
                   options: str | None, missed: str | None, max_missed: int | None,
                   skip_if_running: bool | None, database: str | None) -> None:
    """Change entry NAME (only what is given)."""
    from swf_celery import schedules as api

    changes = _definition(task, workflow, every, cron, args, kwargs, options, missed,
                          max_missed, skip_if_running)
    entry = api.update(name, repo=database_url(database), **changes)
    click.echo(f"updated {entry.name}: {entry.target} {entry.schedule_text}, next run "
               f"{entry.next_run_at:%Y-%m-%d %H:%M:%S %Z}")


@schedules.command("pause")
@click.argument("name")
@database_option
def pause_command(name: str, database: str | None) -> None:
    """Pause entry NAME: no tick fires until it is resumed."""
    from swf_celery import schedules as api

    api.pause(name, database_url(database))
    click.echo(f"paused {name}")


@schedules.command("resume")
@click.argument("name")
@database_option
def resume_command(name: str, database: str | None) -> None:
    """Resume entry NAME at its next tick from now."""
    from swf_celery import schedules as api

    api.resume(name, repo=database_url(database))
    click.echo(f"resumed {name}")


@schedules.command("delete")
@click.argument("name")
@database_option
def delete_command(name: str, database: str | None) -> None:
    """Delete entry NAME and its ticks."""
    from swf_celery import schedules as api

    api.delete(name, database_url(database))
    click.echo(f"deleted {name}")


@schedules.command("import")
@click.option("--shelve", "shelve_path", default=None,
              help="Celery's schedule file (celerybeat-schedule, without a dbm suffix).")
@click.option("--django", "django_url", default=None,
              help="The Django project's PostgreSQL URL (django-celery-beat's tables).")
@click.option("--dry-run", is_flag=True, help="Check every entry, store none.")
@database_option
@json_option
def import_command(shelve_path: str | None, django_url: str | None, dry_run: bool,
                   database: str | None, as_json: bool) -> None:
    """Import the schedule of Celery's file scheduler or of django-celery-beat."""
    from swf_celery.schedules import importing

    if (shelve_path is None) == (django_url is None):
        raise ScheduleError("give --shelve FILE or --django URL (one of them)")
    url = database_url(database)
    if shelve_path is not None:
        report = importing.from_shelve(shelve_path, repo=url, dry_run=dry_run)
    else:
        assert django_url is not None
        report = importing.from_django(django_url, repo=url, dry_run=dry_run)

    def human() -> None:
        verb = "would import" if dry_run else "imported"
        click.echo(f"{verb} {len(report.imported)}: {', '.join(report.imported)}")
        for name, why in report.skipped.items():
            click.echo(f"skipped {name}: {why}")

    emit(asdict(report), as_json, human)
    if report.skipped:
        raise SystemExit(1)
