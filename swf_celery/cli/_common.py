"""What every command shares: one-line errors, the ``--database`` option, output helpers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from swf_celery import db
from swf_celery.db import schema
from swf_celery.errors import SwfError


class SwfGroup(click.Group):
    """A click group that turns SwfError into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SwfError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


def database_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--database/-d`` option of every command that uses a database."""
    return click.option(
        "--database", "-d", "database", default=None,
        help="PostgreSQL URL (default: the Celery app's swf:// URL, $SWF_DATABASE_URL, "
             "else the running embedded server: `swf-celery db start`).",
    )(func)


def database_url(database: str | None, *, require_schema: bool = True) -> str:
    """The URL a command uses (:func:`swf_celery.db.database_url`, with the Celery app of
    ``celery -A app swf …`` when there is one), announced on stderr with its password
    masked and where it came from. The embedded server is never started here: only
    ``swf-celery db start`` starts it.

    With ``require_schema`` (every command but those that set up the database) a database
    whose migrations or functions are older than this code is refused, naming
    ``swf-celery migrate`` (:func:`swf_celery.db.schema.require_current`)."""
    ctx = click.get_current_context(silent=True)
    app = getattr(getattr(ctx, "obj", None), "app", None) if ctx else None
    chosen = db.database_url(database, app=app)
    if chosen.source == "argument":
        chosen = db.DatabaseUrl(chosen.url, "--database")
    click.echo(f"database: {chosen.describe()}", err=True)
    if require_schema:  # a connection of its own: the pool would log each failed attempt
        with db.translate_errors(), db.resolve(chosen.url).connect() as conn:
            schema.require_current(conn)
    return chosen.url


def emit(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON with ``--json``, else call ``human`` to print it for people."""
    if as_json:
        click.echo(json.dumps(data, default=str, indent=2))
    else:
        human()


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--json`` flag of commands that print data."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)
