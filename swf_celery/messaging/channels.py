"""Channel names: validation and the Postgres names a channel maps to.

A channel ``C`` is a lower-case SQL identifier: ``[a-z_][a-z0-9_]*``, ASCII only, at
most 59 characters. Lower-case because an unquoted identifier folds to lower case in
SQL, so ``LISTEN swf_orders`` typed in psql reaches the same channel as the library,
and because pgmq queue names must be lower-case. 59 because the Postgres NOTIFY
channel is ``swf_`` + ``C`` and Postgres identifiers hold 63 bytes (longer names are
silently truncated by ``LISTEN``, which would merge channels).

The pgmq queue holding a channel's messages (pgmq allows 47 characters):

- ``C`` of at most 39 characters: ``swf_ch_`` + ``C`` (at most 46 characters);
- longer ``C``: ``swf_ch_`` + the first 29 characters + ``_`` + the first 10 hex digits
  of SHA-256(``C``) (exactly 47 characters).

The two forms have different lengths, so a short name never maps onto a long one's
queue; two long names collide only if both their 29-character prefix and a 40-bit hash
agree, and even then ``swf.ensure_channel`` refuses the second (``swf.channels`` records
which channel owns each queue), so messages of two channels are never mixed.

This module is pure: it imports no database code.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from swf_celery.errors import ChannelNameError

#: Prefix of every Postgres NOTIFY channel the library uses.
NOTIFY_PREFIX = "swf_"
#: Prefix of every pgmq queue that stores channel messages.
QUEUE_PREFIX = "swf_ch_"
#: Postgres identifier limit (NAMEDATALEN - 1).
IDENTIFIER_BYTES = 63
MAX_CHANNEL_LENGTH = IDENTIFIER_BYTES - len(NOTIFY_PREFIX)  # 59
#: pgmq's queue-name limit.
PGMQ_QUEUE_LENGTH = 47
_SHORT_LIMIT = PGMQ_QUEUE_LENGTH - len(QUEUE_PREFIX) - 1  # 39: short form stays <= 46
_HASH_HEX = 10
_LONG_KEEP = PGMQ_QUEUE_LENGTH - len(QUEUE_PREFIX) - 1 - _HASH_HEX  # 29

#: The channel on which the workflow engine announces run and step state changes.
WORKFLOW_EVENTS = "workflow_events"
#: Channels that only the library itself sends to.
RESERVED = frozenset({WORKFLOW_EVENTS})

_PATTERN = re.compile(r"[a-z_][a-z0-9_]*")
_RULE = (f"use lower-case ASCII letters, digits and underscores, starting with a letter or "
         f"underscore, at most {MAX_CHANNEL_LENGTH} characters")


@dataclass(frozen=True)
class ChannelNames:
    """A validated channel and the Postgres names it maps to."""

    name: str
    notify_channel: str
    queue: str


def validate(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`ChannelNameError`."""
    if not isinstance(name, str):
        raise ChannelNameError(
            f"channel name must be a string, not {type(name).__name__}: {_RULE}")
    if not name:
        raise ChannelNameError(f"channel name is empty: {_RULE}")
    if len(name.encode("utf-8")) > MAX_CHANNEL_LENGTH:
        raise ChannelNameError(
            f"channel name {_show(name)} is {len(name.encode('utf-8'))} bytes long; the limit is "
            f"{MAX_CHANNEL_LENGTH} (Postgres' 63-byte identifier limit minus the "
            f"{NOTIFY_PREFIX!r} prefix)")
    if not _PATTERN.fullmatch(name):
        bad = next((c for c in name if not re.fullmatch(r"[a-z0-9_]", c)), name[0])
        raise ChannelNameError(
            f"channel name {_show(name)} is invalid (character {bad!r} not allowed"
            f"{' first' if bad == name[0] and bad.isdigit() else ''}): {_RULE}")
    return name


def _show(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:77] + "...")


def resolve(name: object) -> ChannelNames:
    """Validate ``name`` and return its :class:`ChannelNames` (NOTIFY channel and pgmq queue)."""
    name = validate(name)
    return ChannelNames(name, NOTIFY_PREFIX + name, queue_name(name))


def queue_name(name: str) -> str:
    """The pgmq queue of a valid channel name (see the module docstring for the rule)."""
    if len(name) <= _SHORT_LIMIT:
        return QUEUE_PREFIX + name
    digest = hashlib.sha256(name.encode("ascii")).hexdigest()[:_HASH_HEX]
    return f"{QUEUE_PREFIX}{name[:_LONG_KEEP]}_{digest}"


def check_sendable(channel: ChannelNames) -> None:
    """Refuse sending to a reserved channel (listening to it is fine)."""
    if channel.name in RESERVED:
        raise ChannelNameError(
            f"channel {channel.name!r} is reserved for the workflow engine's run events: "
            "listen to it, but send on a channel of your own")
