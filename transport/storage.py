"""Where a queue's messages live, chosen once per queue; each statement on them written once.

A queue's storage (``swf.queues.storage``, chosen by ``swf.queue_ensure`` when the queue is
created) is ``pgmq`` — a durable queue, its own pgmq table ``pgmq.q_<pgmq name>`` — or
``transient`` — declared with ``x-expires`` or ``auto_delete`` (Celery's pidbox, reply and
event queues, see :mod:`.transient`): rows of the shared table ``swf.transient_messages``
keyed by queue name. :class:`QueueStorage` turns it into a table and the condition that
selects the queue's rows; ``storage.sql`` holds each statement (read, pop, delete, send,
send_many) once, for both.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from swf_celery.db import load_queries
from swf_celery.errors import QueueNameError
from swf_celery.transport.names import queue_table

STATEMENTS = load_queries("swf_celery.transport", "storage.sql")
#: The statements of storage.sql that run on a queue's messages.
KINDS = ("read", "pop", "delete", "send", "send_many", "send_once")
#: The storages ``swf.queues.storage`` names.
STORAGES = ("pgmq", "transient")
_FRAGMENTS = ("key", "order", "priority", "columns", "values", "free")


@dataclass(frozen=True)
class QueueStorage:
    """A queue as the broker stores it: its pgmq name and its storage."""

    queue: str
    pgmq_name: str
    kind: str
    #: Its messages may carry flow keys: read by ``swf.queue_read_limited``.
    limited: bool = False

    def __post_init__(self) -> None:
        if self.kind not in STORAGES:
            raise QueueNameError(f"queue {self.queue!r} has unknown storage {self.kind!r} "
                                 "in swf.queues")

    @property
    def transient(self) -> bool:
        """True for a queue whose messages are rows of the shared transient table."""
        return self.kind == "transient"

    def table(self) -> sql.Identifier:
        """The table holding the queue's messages."""
        if self.transient:
            return sql.Identifier("swf", "transient_messages")
        return sql.Identifier(*queue_table(self.pgmq_name))

    def statement(self, kind: str) -> sql.Composed:
        """Statement ``kind`` (one of :data:`KINDS`) on this queue's messages; it takes the
        parameter ``queue`` (the kombu name) besides its own."""
        fragments = {name: sql.SQL(STATEMENTS[f"{self.kind}_{name}"]) for name in _FRAGMENTS}
        return sql.SQL(STATEMENTS[kind]).format(table=self.table(), **fragments)
