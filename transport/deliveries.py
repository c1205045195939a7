"""Deliveries and their receipts: a holder that lost a message can no longer touch it.

Each read of a message increments its ``read_ct``; the consumer keeps the value it read as the
delivery's receipt (``delivery_info["swf_receipt"]``, with ``swf_queue`` and ``swf_msg_id``).
Ack, reject, requeue and visibility extension match the message id AND the receipt
(``transport/storage.sql``, ``swf.queue_ack`` / ``queue_reject`` / ``queue_extend``). A
consumer whose visibility timeout lapsed while it held a message (a stall, a lost
connection, a keeper that could not extend) has lost it: another consumer may have read it
(receipt + 1) and runs it. The stale holder's ack, reject or extension then changes nothing,
instead of deleting, requeueing or extending the other consumer's delivery; it is logged
(:func:`report_stale`), never raised into Celery's ack path. Both storages count reads in
``read_ct`` (pgmq's own column, and the same column of ``swf.transient_messages``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)


class Delivery(NamedTuple):
    """One delivery of a message: its queue, its id there, and the delivery's receipt."""

    queue: str
    msg_id: int
    receipt: int


class ReadRows(list[Any]):
    """The message rows of a read; when it delivered none, ``due_known`` is true and
    ``due`` the seconds until the queue's next message is visible (<= 0: one is now; None:
    none is queued). A read that does not say (a no-ack pop, a limited queue's read)
    leaves ``due_known`` false."""

    due_known: bool = False
    due: float | None = None

    @property
    def none_visible(self) -> bool:
        """The read delivered nothing and says no message is visible now."""
        return not self and self.due_known and (self.due is None or self.due > 0)


def delivery_info(queue: str, msg_id: int, receipt: int) -> dict[str, Any]:
    """What a delivered message's ``delivery_info`` carries to find its delivery again."""
    return {"swf_queue": queue, "swf_msg_id": msg_id, "swf_receipt": receipt}


def of(info: Mapping[str, Any]) -> Delivery | None:
    """The delivery a message's ``delivery_info`` names, or None (not read from a queue)."""
    if "swf_msg_id" not in info:
        return None
    return Delivery(info["swf_queue"], int(info["swf_msg_id"]), int(info["swf_receipt"]))


def by_queue(deliveries: Iterable[Delivery]) -> dict[str, tuple[list[int], list[int]]]:
    """Ids and receipts (parallel lists, as the SQL takes them) of ``deliveries`` per queue."""
    out: dict[str, tuple[list[int], list[int]]] = {}
    for d in deliveries:
        ids, receipts = out.setdefault(d.queue, ([], []))
        ids.append(d.msg_id)
        receipts.append(d.receipt)
    return out


def report_stale(action: str, queue: str, asked: list[int], done: int | Iterable[int]) -> None:
    """Log the deliveries among ``asked`` (message ids) that ``action`` did not change.

    ``done`` is the ids changed, or only how many (then the log names every id asked). A
    delivery is stale when its message was delivered again after its visibility timeout
    lapsed here, or is gone (its queue was deleted); nothing is wrong with the broker, and
    the other delivery goes on.
    """
    if isinstance(done, int):
        missed = len(asked) - done
        ids = asked  # which ones is not known: those asked
    else:
        changed = set(done)
        ids = [i for i in asked if i not in changed]
        missed = len(ids)
    if missed > 0:
        logger.info("swf broker: %s of %d message(s) on queue %r ignored (%s): delivered "
                    "again since their visibility timeout lapsed here, or gone", action,
                    missed, queue, ids)
