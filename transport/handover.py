"""A message handed over with its wake-up: delivered to a sleeping consumer with no read.

A consumer asleep on a queue in Celery's event loop (``swf.queue_sleep``) gives the claim
time it accepts (:data:`CLAIM`) and a secret key of its own. The producer's wake-up trigger
then claims the message it wakes the consumer for, as a read does (hidden for the claim, its
``read_ct`` the delivery's receipt), and sends the message in the NOTIFY on the consumer's
own channel, as JSON: ``{"q": "swfq_<pgmq name>", "id": msg_id, "r": receipt, "p":
priority, "m": message}``, after its signature: 64 hex digits of
``sha256(sha256(key || JSON))``. Anyone who can connect may NOTIFY any channel; only a
payload signed with the consumer's key (which only the database's functions read) is taken
for a message (:func:`parse`), so a forged one costs at most a read, as before.
The consumer delivers it at once (:mod:`.eventloop`); its visibility keeper extends the claim
to the visibility timeout at its next tick, a second later at most. A consumer that cannot
take it (its prefetch window is full, or it left the queue) gives it back and passes the
wake-up on (``swf.queue_pass_wake``).

A message is handed over only when it is visible at once, carries no flow key, is stored in
a queue of its own (not the transient table) and fits a NOTIFY (``swf._queue_hand_over``);
otherwise the consumer is woken and reads, as before. A handed message whose consumer dies
or loses its LISTEN connection before taking it is visible again when the claim ends.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from swf_celery.transport.names import is_listen_channel

#: Seconds a handed message stays claimed for its consumer before the visibility keeper
#: extends it (it ticks each second): how long a message handed to a consumer that died
#: waits before another consumer may take it.
CLAIM = 5.0
#: Hex digits of a payload's signature.
SIGNATURE = 64


def new_key() -> str:
    """A consumer's secret key for the hand-overs to it (32 hex digits)."""
    return secrets.token_hex(16)


def signature(key: str, body: str) -> str:
    """The signature of a hand-over's JSON ``body`` with ``key``, as the database makes it."""
    inner = hashlib.sha256((key + body).encode("utf-8")).digest()
    return hashlib.sha256(inner).hexdigest()


@dataclass(frozen=True)
class Handed:
    """A message claimed for this consumer by the wake-up that named it."""

    channel: str  #: the queue's NOTIFY channel, ``swfq_<pgmq name>``
    msg_id: int
    receipt: int
    priority: int
    message: dict[str, Any]

    def row(self) -> tuple[int, int, dict[str, Any], int]:
        """The message as a read returns it: (msg_id, receipt, message, priority)."""
        return self.msg_id, self.receipt, self.message, self.priority


def parse(payload: str, key: str) -> Handed | None:
    """The handed message in a wake-up's ``payload`` signed with ``key``; None for any other
    payload (a queue's channel, a forgery)."""
    sig, body = payload[:SIGNATURE], payload[SIGNATURE:]
    if not body.startswith("{") or not hmac.compare_digest(sig, signature(key, body)):
        return None
    try:
        data = json.loads(body)
        handed = Handed(str(data["q"]), int(data["id"]), int(data["r"]), int(data.get("p", 0)),
                        data["m"])
    except (ValueError, KeyError, TypeError):
        return None
    if not is_listen_channel(handed.channel) or not isinstance(handed.message, dict):
        return None
    return handed


def claim_ms(visibility_timeout: float) -> int:
    """The claim a consumer asks for, in ms: :data:`CLAIM`, or its visibility timeout when
    that is shorter."""
    return max(1, int(min(CLAIM, visibility_timeout) * 1000))
