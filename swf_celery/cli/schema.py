"""``swf-celery migrate`` and ``swf-celery version``: the database schema."""

from __future__ import annotations

import click

from swf_celery.cli._common import database_option, database_url, emit, json_option


@click.command("migrate")
@database_option
@json_option
def migrate_command(database: str | None, as_json: bool) -> None:
    """Install pgmq, apply pending migrations and every stored function (safe to repeat)."""
    from swf_celery.ops import migrate

    result = migrate.migrate(database_url(database, require_schema=False))
    data = {"applied": result.applied, "version": result.version, "pgmq": result.pgmq,
            "dropped": list(result.dropped)}
    emit(data, as_json, lambda: click.echo(
        f"schema version {result.version} (applied {result.applied or 'nothing'}; "
        f"pgmq: {result.pgmq}"
        + (f"; functions dropped: {', '.join(result.dropped)}" if result.dropped else "")
        + ")"))


@click.command("version")
@database_option
def version_command(database: str | None) -> None:
    """Print the schema version of the database and of this code."""
    from swf_celery.ops import migrate

    url = database_url(database, require_schema=False)
    click.echo(f"database {migrate.current_version(url)}, code {migrate.latest_version()}")
