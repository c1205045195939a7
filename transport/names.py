"""Queue names: what the broker accepts, checked before anything reaches PostgreSQL.

Any name Celery or a user gives works (``celery@host.celery.pidbox``, ``GPU.high``, ``a;drop``,
non-ASCII) as long as it can be stored faithfully: non-empty, no control characters (NUL
cannot be stored in PostgreSQL text at all), at most 255 bytes in UTF-8 (RabbitMQ's limit).
The database maps each accepted name to a safe pgmq name (``swf.queue_pgmq_name``:
``k_<sanitised prefix>_<12 hex digits of SHA-256>``) kept in ``swf.queues``; the same rules
are enforced there for SQL callers (``swf.queue_check_name``). Transient queues (declared with
``x-expires`` or ``auto_delete``) get a ``t_`` prefix instead; where a queue's messages live is
its storage (:mod:`.storage`), not its name.
"""

from __future__ import annotations

import re

from swf_celery.errors import QueueNameError

MAX_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: What ``swf.queue_pgmq_name`` produces; checked again before a name becomes an identifier.
PGMQ_NAME = re.compile(r"^k_[a-z0-9_]{0,24}_[0-9a-f]{12}$")
#: The pgmq name of a transient queue (no table: its messages are rows of
#: ``swf.transient_messages``); it names the queue's NOTIFY channel all the same.
TRANSIENT_NAME = re.compile(r"^t_[a-z0-9_]{0,24}_[0-9a-f]{12}$")


def check_queue_name(name: object) -> str:
    """Return ``name`` if the broker can store it, else raise QueueNameError naming the rule."""
    if not isinstance(name, str):
        raise QueueNameError(f"queue name must be a string, not {type(name).__name__}")
    if not name:
        raise QueueNameError("invalid queue name: the name is empty")
    match = _CONTROL.search(name)
    if match:
        raise QueueNameError(
            f"invalid queue name {name[:60]!r}: control characters are not allowed "
            f"(found {match.group()!r} at position {match.start()})")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise QueueNameError(
            f"invalid queue name {name[:40]!r}...: {size} bytes, the limit is {MAX_BYTES} "
            "bytes in UTF-8")
    return name


def listen_channel(pgmq_name: str) -> str:
    """The NOTIFY channel on which producers wake consumers of a queue."""
    if not (PGMQ_NAME.match(pgmq_name) or TRANSIENT_NAME.match(pgmq_name)):
        raise QueueNameError(f"unexpected pgmq queue name {pgmq_name!r} from swf.queues")
    return f"swfq_{pgmq_name}"


def is_listen_channel(name: str) -> bool:
    """True when ``name`` is a queue's NOTIFY channel as :func:`listen_channel` makes it."""
    pgmq_name = name.removeprefix("swfq_")
    return pgmq_name != name and bool(PGMQ_NAME.match(pgmq_name)
                                      or TRANSIENT_NAME.match(pgmq_name))


def queue_table(pgmq_name: str) -> tuple[str, str]:
    """(schema, table) of a pgmq queue, for ``psycopg.sql.Identifier``."""
    if not PGMQ_NAME.match(pgmq_name):
        raise QueueNameError(f"unexpected pgmq queue name {pgmq_name!r} from swf.queues")
    return "pgmq", f"q_{pgmq_name}"

