"""A message handed over with its wake-up: delivered to a sleeping consumer with no read.

A consumer asleep on a queue in Celery's event loop (``swf.queue_sleep``) gives the claim
time it accepts (:data:`CLAIM`). The producer's wake-up trigger then claims the message it
wakes the consumer for, as a read does (hidden for the claim, its ``read_ct`` the delivery's
receipt), and sends the message in the NOTIFY on the consumer's own channel, as JSON:
``{"q": "swfq_<pgmq name>", "id": msg_id, "r": receipt, "p": priority, "m": message}``.
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

import json
from dataclasses import dataclass
from typing import Any

from swf_celery.transport.names import is_listen_channel

#: Seconds a handed message stays claimed for its consumer before the visibility keeper
#: extends it (it ticks each second): how long a message handed to a consumer that died
#: waits before another consumer may take it.
CLAIM = 5.0


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


def parse(payload: str) -> Handed | None:
    """The handed message in a wake-up's ``payload``; None for any other payload."""
    if not payload.startswith("{"):
        return None
    try:
        data = json.loads(payload)
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
