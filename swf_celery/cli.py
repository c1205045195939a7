"""The ``swf-celery`` command line, also mounted as ``celery -A app swf …``.

Errors print one line (``error: …``) and exit with status 1. ``--json`` gives
machine-readable output where a command prints data.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from swf_celery.errors import SwfError


class _SwfGroup(click.Group):
    """A click group that turns SwfError into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SwfError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


def _database_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--database", "-d", "database", envvar="SWF_DATABASE_URL", default=None,
        help="PostgreSQL URL (default: $SWF_DATABASE_URL, else the embedded server).",
    )(func)


def resolve_database_url(database: str | None) -> str:
    """The URL a command should use: the option, ``$SWF_DATABASE_URL``, the Celery app's
    ``swf://`` broker or backend URL, else the embedded server (started if needed)."""
    if database:
        return database
    ctx = click.get_current_context(silent=True)
    app = getattr(getattr(ctx, "obj", None), "app", None) if ctx else None
    if app is not None:
        for candidate in (app.conf.result_backend, app.conf.broker_url):
            if isinstance(candidate, str) and candidate.startswith("swf://"):
                return candidate
    from swf_celery import embedded

    return embedded.database_url()


def _emit(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, default=str, indent=2))
    else:
        human()


@click.group(cls=_SwfGroup)
def main() -> None:
    """swf-celery: PostgreSQL-backed workflows, broker and results for Celery."""


@main.group(cls=_SwfGroup)
def db() -> None:
    """Manage the embedded PostgreSQL used when SWF_DATABASE_URL is not set."""


@db.command("start")
def db_start() -> None:
    """Start the embedded server (idempotent) and print its URL."""
    from swf_celery import embedded

    click.echo(embedded.start())


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded server."""
    from swf_celery import embedded

    click.echo("stopped" if embedded.stop() else "not running")


@db.command("restart")
def db_restart() -> None:
    """Restart the running embedded server (fast shutdown: connections are dropped)."""
    from swf_celery import embedded

    embedded.restart()
    click.echo("restarted")


@db.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def db_status(as_json: bool) -> None:
    """Show whether the embedded server runs, its pid, port and data directory."""
    from swf_celery import embedded

    st = embedded.status()
    data = {"running": st.running, "pid": st.pid, "port": st.port,
            "data_dir": str(st.data_dir), "url": st.url}
    _emit(data, as_json, lambda: click.echo(
        f"{'running' if st.running else 'stopped'}  pid={st.pid}  port={st.port}  "
        f"data={st.data_dir}  url={st.url}"))
    if not st.running:
        sys.exit(3)


@db.command("url")
def db_url() -> None:
    """Print the database URL in use ($SWF_DATABASE_URL, else the embedded server's)."""
    from swf_celery import embedded

    click.echo(os.environ.get("SWF_DATABASE_URL") or embedded.url())


@main.command("migrate")
@_database_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def migrate_command(database: str | None, as_json: bool) -> None:
    """Install pgmq and apply pending schema migrations (safe to repeat)."""
    from swf_celery import migrate

    url = resolve_database_url(database)
    result = migrate.migrate(url)
    data = {"applied": result.applied, "version": result.version, "pgmq": result.pgmq}
    _emit(data, as_json, lambda: click.echo(
        f"schema version {result.version} (applied {result.applied or 'nothing'}; "
        f"pgmq: {result.pgmq})"))


@main.command("version")
@_database_option
def version_command(database: str | None) -> None:
    """Print the schema version of the database and of this code."""
    from swf_celery import migrate

    url = resolve_database_url(database)
    click.echo(f"database {migrate.current_version(url)}, code {migrate.latest_version()}")


@main.command("drain-redis")
@click.argument("redis_url")
@click.argument("queues", nargs=-1, required=True)
@_database_option
def drain_redis_command(redis_url: str, queues: tuple[str, ...], database: str | None) -> None:
    """Move queued messages of Redis QUEUES into the swf broker (stop workers first)."""
    from swf_celery.redis_drain import drain_queue, held_by_workers

    url = resolve_database_url(database)
    for queue in queues:
        click.echo(f"{queue}: moved {drain_queue(redis_url, queue, url)} messages")
    held = held_by_workers(redis_url, queues)
    if held:
        click.echo(f"warning: {held} message(s) of these queues are held unacknowledged by "
                   "Redis workers (hash 'unacked') and were not moved: stop those workers "
                   "with a warm shutdown (TERM) and run drain-redis again", err=True)


@main.command("send")
@click.argument("channel")
@click.argument("message", metavar="JSON")
@_database_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def send_command(channel: str, message: str, database: str | None, as_json: bool) -> None:
    """Store JSON on CHANNEL and NOTIFY its listeners; print the message id."""
    from swf_celery.errors import PayloadError
    from swf_celery.messaging import send_with_notify

    try:
        body = json.loads(message)
    except ValueError as exc:
        raise PayloadError(f"JSON argument is not valid JSON ({exc}): {message[:80]!r}") from None
    message_id = send_with_notify(channel, body, resolve_database_url(database))
    _emit({"channel": channel, "message_id": message_id}, as_json,
          lambda: click.echo(message_id))


@main.command("listen")
@click.argument("channel")
@_database_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Exit after N notifications.")
def listen_command(channel: str, database: str | None, as_json: bool,
                   count: int | None) -> None:
    """Print each notification on CHANNEL as it arrives (Ctrl-C to stop).

    `workflow_events` shows the workflow engine's run events. After a reconnect a
    "gap" line says that notifications may have been missed.
    """
    from swf_celery.listener import listen

    listener = listen(channel, resolve_database_url(database))
    # On stderr, so scripts reading stdout see only notifications but know when to send.
    click.echo(f"listening on {listener.channel} (PostgreSQL channel "
               f"{listener.notify_channel})", err=True)
    seen = 0
    try:
        for note in listener:
            if as_json:
                click.echo(json.dumps(note.as_dict(), separators=(",", ":")))
            elif note.kind == "message":
                click.echo(f"{note.channel}  message {note.message_id}")
            elif note.kind == "gap":
                click.echo(f"{note.channel}  gap: reconnected, notifications may have been "
                           "missed")
            else:
                click.echo(f"{note.channel}  {note.payload}")
            seen += 1
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


# Workflow run commands (runs list/show/watch, pause, resume, cancel, retry) live in their
# own module, which imports the helpers above: registered here, after them. Under
# `python -m swf_celery.cli` this file is __main__ and defers to the imported module.
if __name__ != "__main__":
    from swf_celery.runs_cli import register as _register_run_commands

    _register_run_commands(main)

# ``celery -A app swf …`` (entry point group ``celery.commands``): the same commands.
celery_command = _SwfGroup(name="swf", commands=main.commands,
                           help="swf-celery workflows, broker and results.")


def run() -> None:
    """Console-script entry: ``swf-celery``."""
    main()


if __name__ == "__main__":  # pragma: no cover
    from swf_celery.cli import main as _main

    _main()
