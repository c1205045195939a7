"""Commands on the broker's queues: move a Redis broker's messages into ours, cancel a
plain Celery canvas."""

from __future__ import annotations

import click

from swf_celery.cli._common import database_option, database_url, emit, json_option


@click.command("drain-redis")
@click.argument("redis_url")
@click.argument("queues", nargs=-1, required=True)
@database_option
def drain_redis_command(redis_url: str, queues: tuple[str, ...], database: str | None) -> None:
    """Move queued messages of Redis QUEUES into the swf broker (stop workers first)."""
    from swf_celery.ops.redis_drain import drain_queue, held_by_workers

    url = database_url(database)
    for queue in queues:
        click.echo(f"{queue}: moved {drain_queue(redis_url, queue, url)} messages")
    held = held_by_workers(redis_url, queues)
    if held:
        click.echo(f"warning: {held} message(s) of these queues are held unacknowledged by "
                   "Redis workers (hash 'unacked') and were not moved: stop those workers "
                   "with a warm shutdown (TERM) and run drain-redis again", err=True)


@click.command("cancel-canvas")
@click.argument("root_id")
@database_option
@json_option
def cancel_canvas_command(root_id: str, database: str | None, as_json: bool) -> None:
    """Cancel a Celery chain/group/chord by ROOT_ID: remove its queued messages, revoke
    the tasks workers hold."""
    from swf_celery.ops.canvas import cancel_canvas

    done = cancel_canvas(root_id, database_url(database))
    emit({"root_id": root_id, "removed": done.removed, "revoked": done.revoked}, as_json,
         lambda: click.echo(f"canvas {root_id}: removed {done.removed} queued message(s), "
                            f"revoked {len(done.revoked)} task(s)"))
