"""The ``swf-celery`` command line, also mounted as ``celery -A app swf …``.

One module per command group: :mod:`.database` (``db``), :mod:`.schema` (``migrate``,
``version``), :mod:`.messaging` (``send``, ``listen``), :mod:`.runs` (``runs``, ``pause``,
``resume``, ``cancel``, ``retry``), :mod:`.broker` (``drain-redis``, ``cancel-canvas``) and
:mod:`.grant` (``grant``), :mod:`.cleanup` (``cleanup``), :mod:`.keys` (``keys``: held
flow keys), :mod:`.schedules` (``schedules``), :mod:`.doctor` (``doctor``) and :mod:`.ui`
(``ui``).
Errors print one line (``error: …``) and exit with status 1. ``--json`` gives
machine-readable output where a command prints data.
"""

from __future__ import annotations

import click

from swf_celery.cli import broker, doctor, keys, messaging, runs, schedules, schema, ui
from swf_celery.cli._common import SwfGroup
from swf_celery.cli.cleanup import cleanup_command
from swf_celery.cli.database import database
from swf_celery.cli.grant import grant_command


@click.group(cls=SwfGroup)
def main() -> None:
    """swf-celery: PostgreSQL-backed workflows, broker and results for Celery."""


for _command in (database, schema.migrate_command, schema.version_command,
                 broker.drain_redis_command, messaging.send_command, messaging.listen_command,
                 runs.runs, runs.pause_command, runs.resume_command, runs.cancel_command,
                 runs.retry_command, runs.replay_command, runs.signal_command,
                 broker.cancel_canvas_command, grant_command,
                 cleanup_command, doctor.doctor_command, ui.ui_command, keys.keys,
                 schedules.schedules):
    main.add_command(_command)

#: ``celery -A app swf …`` (entry point group ``celery.commands``): the same commands.
celery_command = SwfGroup(name="swf", commands=main.commands,
                          help="swf-celery workflows, broker and results.")
