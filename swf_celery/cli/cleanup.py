"""``swf-celery cleanup``: delete what the retention policy no longer keeps."""

from __future__ import annotations

import click

from swf_celery.cli._common import database_option, database_url, emit, json_option


@click.command("cleanup")
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="One age for every store instead of its setting (e.g. 7d, 12h, 30m), "
                   "and results stored without expiry older than AGE too. Default: the "
                   "retention settings (runs, task graphs, unacknowledged channel messages "
                   "and unused queues 30d, dynamic flows 90d, archives and dead letters 7d, "
                   "results by their expiry).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@database_option
@json_option
def cleanup_command(older_than: str | None, dry_run: bool, database: str | None,
                    as_json: bool) -> None:
    """Delete what retention no longer keeps, in batches (needs an operator role).

    Finished runs, task graphs, unused dynamic flows, archives, dead letters, old
    unacknowledged channel messages, expired results and unused durable queues. Schedule it
    from cron or a systemd timer as an operator (docs/retention.md).
    """
    from swf_celery.ops.retention import RetentionPolicy, cleanup, parse_age

    ctx = click.get_current_context()
    app = getattr(ctx.obj, "app", None)
    policy = RetentionPolicy.from_conf(app.conf if app is not None else None)
    if older_than is not None:
        age = parse_age(older_than, "--older-than")
        if age is None:
            raise click.BadParameter("must be more than 0", param_hint="--older-than")
        policy = policy.older_than(age)
    report = cleanup(database_url(database), policy, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"

    def human() -> None:
        for store, count in report.deleted.items():
            click.echo(f"{store}: {verb} {count}")
        if report.busy:
            click.echo("another cleanup is running; stopped early (run again later)", err=True)

    emit({"dry_run": dry_run, "busy": report.busy, "deleted": report.deleted}, as_json, human)
