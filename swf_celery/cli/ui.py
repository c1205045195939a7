"""``swf-celery ui``: serve the web console (``celery -A app swf ui`` uses the app)."""

from __future__ import annotations

import os

import click

from swf_celery.cli._common import database_option, database_url
from swf_celery.errors import ConfigurationError


@click.command("ui")
@database_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs $SWF_UI_TOKEN.")
@click.option("--port", type=click.IntRange(0, 65535), default=8800, show_default=True)
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Another Host name clients use to reach the console (repeatable); "
                   "127.0.0.1, localhost, ::1 and --host are always allowed; '*' allows "
                   "any (needs $SWF_UI_TOKEN).")
@click.option("--read-only", is_flag=True,
              help="Hide and refuse every control; read through read-only sessions and ask "
                   "no worker anything.")
def ui_command(database: str | None, host: str, port: int, allowed_hosts: tuple[str, ...],
               read_only: bool) -> None:
    """Serve the web console: runs, live DAGs, controls, queues, dead letters, /metrics."""
    try:
        import uvicorn

        from swf_celery.ui import create_app
        from swf_celery.ui.security import TOKEN_ENV, bind_hosts, check_bind
    except ImportError as exc:
        raise ConfigurationError(f"the console needs the web extra ({exc.name} is missing): "
                                 "pip install 'swf-celery[web]'") from None
    from celery import Celery

    from swf_celery.db import broker_url

    token = os.environ.get(TOKEN_ENV) or None
    check_bind(host, token)
    hosts = bind_hosts(host, allowed_hosts)
    url = database_url(database)
    ctx = click.get_current_context()
    celery_app = getattr(ctx.obj, "app", None) or Celery("swf-console", broker=broker_url(url))
    # check_bind has refused a non-loopback address without a token.
    app = create_app(url, allowed_hosts=hosts, token=token, require_token=False,
                     read_only=read_only, celery_app=celery_app)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"swf-celery console on http://{shown}:{port}/"
               + (" (read-only)" if read_only else "")
               + (f" (token required: ?token=<{TOKEN_ENV}>)" if token else ""))
    # Open event streams never end by themselves: give them 3 s on Ctrl-C, then close.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
