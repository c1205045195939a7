"""``swf-celery keys``: flow keys held until a time (list, hold, release)."""

from __future__ import annotations

import click

from swf_celery.cli._common import database_option, database_url, emit, json_option


@click.group("keys")
def keys() -> None:
    """Flow keys: list the held ones, hold one until a time, release one."""


@keys.command("list")
@database_option
@json_option
def list_command(database: str | None, as_json: bool) -> None:
    """The keys held now, the soonest released first."""
    from swf_celery.limits.holds import held_keys

    held = held_keys(database_url(database))

    def human() -> None:
        if not held:
            click.echo("no key is held")
        for k in held:
            click.echo(f"{k.key}  until {k.until:%Y-%m-%d %H:%M:%S%z}"
                       + (f"  {k.reason}" if k.reason else "") + (f"  by {k.by}" if k.by else ""))

    emit([{"key": k.key, "until": k.until, "reason": k.reason, "by": k.by} for k in held],
         as_json, human)


@keys.command("hold")
@click.argument("key")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), required=True,
              help="Hold the key this many seconds from now.")
@click.option("--reason", default=None, help="Why (shown by `keys list` and the console).")
@database_option
def hold_command(key: str, seconds: float, reason: str | None, database: str | None) -> None:
    """Hold KEY: its messages are not delivered until the time given."""
    from swf_celery.limits.holds import hold_key

    until = hold_key(key, seconds, reason=reason, repo=database_url(database))
    click.echo(f"{key} held until {until:%Y-%m-%d %H:%M:%S%z}")


@keys.command("release")
@click.argument("key")
@database_option
def release_command(key: str, database: str | None) -> None:
    """Release KEY now (its messages flow again)."""
    from swf_celery.limits.holds import release_key

    released = release_key(key, database_url(database))
    click.echo(f"{key} released" if released else f"{key} was not held")
