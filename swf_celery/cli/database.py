"""``swf-celery db …``: the embedded PostgreSQL used when no database URL is set."""

from __future__ import annotations

import sys

import click

from swf_celery.cli._common import SwfGroup, emit, json_option
from swf_celery.errors import ConfigurationError


@click.group("db", cls=SwfGroup)
def database() -> None:
    """Manage the embedded PostgreSQL used when SWF_DATABASE_URL is not set."""


@database.command("start")
def db_start() -> None:
    """Start the embedded server (idempotent) and print its URL, password masked."""
    from swf_celery.ops import embedded

    embedded.start()
    click.echo(embedded.masked_url())


@database.command("stop")
def db_stop() -> None:
    """Stop the embedded server."""
    from swf_celery.ops import embedded

    click.echo("stopped" if embedded.stop() else "not running")


@database.command("restart")
def db_restart() -> None:
    """Restart the running embedded server (fast shutdown: connections are dropped)."""
    from swf_celery.ops import embedded

    embedded.restart()
    click.echo("restarted")


@database.command("status")
@json_option
def db_status(as_json: bool) -> None:
    """Show whether the embedded server runs, its pid, port, OS user, data directory and
    URL (password masked)."""
    from swf_celery.ops import embedded

    st = embedded.status()
    data = {"running": st.running, "pid": st.pid, "port": st.port, "user": st.user,
            "data_dir": str(st.data_dir), "url": st.url}
    emit(data, as_json, lambda: click.echo(
        f"{'running' if st.running else 'stopped'}  pid={st.pid}  port={st.port}  "
        f"user={st.user}  data={st.data_dir}  url={st.url}"))
    if not st.running:
        sys.exit(3)


@database.command("url")
def db_url() -> None:
    """Print the database URL in use, password included ($SWF_DATABASE_URL, else the
    embedded server's); where it came from goes to stderr."""
    from swf_celery import db
    from swf_celery.ops import embedded

    try:
        chosen = db.database_url()
    except ConfigurationError:  # nothing configured and the embedded server is stopped
        chosen = db.DatabaseUrl(embedded.url(), "embedded server (not running)")
    click.echo(f"database: {chosen.describe()}", err=True)
    click.echo(chosen.url)


@database.command("remove")
def db_remove() -> None:
    """Stop the embedded server and delete its cluster and password file (as root, the
    cluster's system user too)."""
    from swf_celery.ops import embedded

    click.echo("removed" if embedded.remove() else "nothing to remove")
