"""``swf-celery send`` and ``swf-celery listen``: channels from the shell."""

from __future__ import annotations

import json

import click

from swf_celery.cli._common import database_option, database_url, emit, json_option


@click.command("send")
@click.argument("channel")
@click.argument("message", metavar="JSON")
@database_option
@json_option
def send_command(channel: str, message: str, database: str | None, as_json: bool) -> None:
    """Store JSON on CHANNEL and NOTIFY its listeners; print the message id."""
    from swf_celery.errors import PayloadError
    from swf_celery.messaging.send import send_with_notify

    try:
        body = json.loads(message)
    except ValueError as exc:
        raise PayloadError(f"JSON argument is not valid JSON ({exc}): {message[:80]!r}") from None
    message_id = send_with_notify(channel, body, database_url(database))
    emit({"channel": channel, "message_id": message_id}, as_json,
         lambda: click.echo(message_id))


@click.command("listen")
@click.argument("channel")
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Exit after N notifications.")
def listen_command(channel: str, database: str | None, as_json: bool,
                   count: int | None) -> None:
    """Print each notification on CHANNEL as it arrives (Ctrl-C to stop).

    `workflow_events` shows the workflow engine's run events. After a reconnect a
    "gap" line says that notifications may have been missed.
    """
    from swf_celery.messaging.listen import listen

    listener = listen(channel, database_url(database))
    # On stderr, so scripts reading stdout see only notifications but know when to send.
    click.echo(f"listening on {listener.channel} (PostgreSQL channel "
               f"{listener.notify_channel})", err=True)
    seen = 0
    try:
        for note in listener:
            if as_json:
                click.echo(json.dumps(note.as_dict(), separators=(",", ":")))
            elif note.kind == "message":
                # a workflow event also carries the event itself
                shown = f"  {note.payload}" if note.payload is not None else ""
                click.echo(f"{note.channel}  message {note.message_id}{shown}")
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
