"""``swf-celery grant ROLE --worker|--client|--operator``: least privilege for a role."""

from __future__ import annotations

import click

from swf_celery.cli._common import database_option, database_url
from swf_celery.errors import ArgumentError


@click.command("grant")
@click.argument("role")
@click.option("--worker", "kind", flag_value="worker",
              help="Consume and publish, report steps, store results.")
@click.option("--client", "kind", flag_value="client",
              help="Publish, read results, start and watch runs.")
@click.option("--operator", "kind", flag_value="operator",
              help="Lifecycle (pause, resume, cancel, retry, purge) and cleanup.")
@database_option
def grant_command(role: str, kind: str | None, database: str | None) -> None:
    """Give ROLE exactly what a worker, a client or an operator needs (run it as the role
    that ran `migrate`, again after each migrate)."""
    from swf_celery.ops import grants

    if kind is None:
        raise ArgumentError("say which part ROLE plays: --worker, --client or --operator")
    grants.grant(role, kind, database_url(database, require_schema=False))  # type: ignore[arg-type]
    click.echo(f"granted {kind} privileges to {role}")
