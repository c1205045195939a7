"""Channel names: validation and the Postgres names a channel maps to.

A channel name is any text PostgreSQL can carry as an identifier: 1 to 63 UTF-8 bytes,
no NUL character (capitals, ``:``, ``.``, ``-``, spaces and non-ASCII are fine, and case
matters: ``Orders`` and ``orders`` are two channels). Names starting with ``swf:`` are
reserved for the library. :data:`WORKFLOW_EVENTS` (``workflow_events``, the reference's
channel) carries the workflow engine's run events, stored like any channel's messages;
applications may send their own messages on it too, as the reference's examples do.
``swf:workflow_events``, the engine's channel before, is a listen-only alias of it.

The Postgres NOTIFY channel of a channel ``C`` (quoted, so exact):

- ``swf_`` + ``C`` when that fits in 63 bytes (``LISTEN swf_orders`` in psql reaches
  ``orders``; quote mixed-case names: ``LISTEN "swf_Orders"``);
- otherwise ``swf#`` + the first bytes of ``C`` + ``#`` + 10 hex digits of SHA-256(``C``),
  63 bytes at most. No short name maps there: those all start with ``swf_``.

The pgmq queue holding a channel's messages (pgmq allows 47 characters of
``[a-z0-9_]``):

- a name of lower-case ASCII letters, digits and underscores (not starting with a
  digit) of at most 39 characters: ``swf_ch_`` + ``C`` (at most 46 characters);
- any other name: ``swf_ch_`` + its first 29 characters with anything else replaced by
  ``_``, padded with ``_`` to 29 + ``_`` + the first 10 hex digits of SHA-256(``C``)
  (exactly 47 characters).

The two forms have different lengths, so a short name never maps onto a long one's
queue; two other names collide only if both their 29-character prefix and a 40-bit hash
agree, and even then ``swf.ensure_channel`` refuses the second (``swf.channels`` records
which channel owns each queue), so messages of two channels are never mixed.

This module is pure: it imports no database code.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from swf_celery.errors import ChannelNameError

#: Prefix of every Postgres NOTIFY channel of a user channel that fits.
NOTIFY_PREFIX = "swf_"
#: Prefix of the NOTIFY channel of a user channel too long for :data:`NOTIFY_PREFIX`.
LONG_NOTIFY_PREFIX = "swf#"
#: Prefix of every pgmq queue that stores channel messages.
QUEUE_PREFIX = "swf_ch_"
#: Postgres identifier limit (NAMEDATALEN - 1).
IDENTIFIER_BYTES = 63
MAX_CHANNEL_BYTES = IDENTIFIER_BYTES
#: pgmq's queue-name limit.
PGMQ_QUEUE_LENGTH = 47
_SHORT_LIMIT = PGMQ_QUEUE_LENGTH - len(QUEUE_PREFIX) - 1  # 39: short form stays <= 46
_HASH_HEX = 10
_LONG_KEEP = PGMQ_QUEUE_LENGTH - len(QUEUE_PREFIX) - 1 - _HASH_HEX  # 29

#: Names starting with this are the library's own.
RESERVED_PREFIX = "swf:"
#: The channel on which the workflow engine announces run and step state changes.
WORKFLOW_EVENTS = "workflow_events"
#: Its former name, still accepted for listening and reading.
LEGACY_WORKFLOW_EVENTS = "swf:workflow_events"
#: Names that may be listened to, not sent to.
RESERVED = frozenset({LEGACY_WORKFLOW_EVENTS})

_SIMPLE = re.compile(r"[a-z_][a-z0-9_]*")
_RULE = (f"use 1 to {MAX_CHANNEL_BYTES} bytes of UTF-8 text without NUL characters "
         "(PostgreSQL's identifier limit)")


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
    if "\x00" in name:
        raise ChannelNameError(
            f"channel name {_show(name)} contains a NUL character, which PostgreSQL "
            "cannot carry in a channel name")
    size = len(name.encode("utf-8"))
    if size > MAX_CHANNEL_BYTES:
        raise ChannelNameError(
            f"channel name {_show(name)} is {size} bytes long; the limit is "
            f"{MAX_CHANNEL_BYTES} (PostgreSQL's identifier limit)")
    if name.startswith(RESERVED_PREFIX) and name not in RESERVED:
        raise ChannelNameError(
            f"channel name {_show(name)} starts with {RESERVED_PREFIX!r}, which is reserved "
            "for the library; choose another name")
    return name


def _show(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:77] + "...")


def resolve(name: object) -> ChannelNames:
    """Validate ``name`` and return its :class:`ChannelNames` (NOTIFY channel and pgmq queue)."""
    name = validate(name)
    if name == LEGACY_WORKFLOW_EVENTS:
        name = WORKFLOW_EVENTS
    return ChannelNames(name, notify_channel(name), queue_name(name))


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:_HASH_HEX]


def notify_channel(name: str) -> str:
    """The Postgres NOTIFY channel of a valid channel name (see the module docstring)."""
    if name == LEGACY_WORKFLOW_EVENTS:
        name = WORKFLOW_EVENTS
    if len((NOTIFY_PREFIX + name).encode("utf-8")) <= IDENTIFIER_BYTES:
        return NOTIFY_PREFIX + name
    room = IDENTIFIER_BYTES - len(LONG_NOTIFY_PREFIX) - 1 - _HASH_HEX
    head = name.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return f"{LONG_NOTIFY_PREFIX}{head}#{_digest(name)}"


def queue_name(name: str) -> str:
    """The pgmq queue of a valid channel name (see the module docstring for the rule)."""
    if len(name) <= _SHORT_LIMIT and _SIMPLE.fullmatch(name):
        return QUEUE_PREFIX + name
    head = re.sub(r"[^a-z0-9_]", "_", name[:_LONG_KEEP].lower()).ljust(_LONG_KEEP, "_")
    return f"{QUEUE_PREFIX}{head}_{_digest(name)}"


def check_sendable(name: str) -> None:
    """Refuse sending to a reserved channel name (listening to it is fine)."""
    if name in RESERVED:
        raise ChannelNameError(
            f"channel {name!r} is reserved: it is the listen-only former name of "
            f"{WORKFLOW_EVENTS!r}, the engine's events channel (send there, or on a "
            "channel of your own)")
