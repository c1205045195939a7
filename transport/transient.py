"""Transient queues: Celery's pidbox, reply and event queues without a table each.

A queue declared with ``x-expires`` or ``auto_delete`` (Celery's ``*.celery.pidbox``,
``*.reply.celery.pidbox`` and ``celeryev.*`` queues, ``worker_direct`` queues, a user's
auto-delete queue) is a row of ``swf.queues`` whose storage is ``transient``: its messages
are rows of the shared, indexed table ``swf.transient_messages`` (:mod:`.storage` holds the
statements on them, the same as a durable queue's). Declaring,
expiring and deleting it is DML only, so workers and monitors that come and go leave the
system catalog as it was (a pgmq queue costs two tables, their indexes and a trigger).

Semantics are those of the other queues (visibility timeout, ack, reject/requeue,
dead letters, purge, size, bindings, wake-ups), plus:

* an ``auto_delete`` queue without ``x-expires`` expires after :data:`AUTO_DELETE_EXPIRES_MS`
  unused (kombu's virtual transport never deletes it on its own);
* a queue that expired is never resurrected without its bindings: a publisher drops the
  message (the foreign key to ``swf.queues`` refuses it, as Redis drops a fanout message
  nobody listens to), and the keeper of the consumer that owns the queue declares it again
  with its bindings (:func:`redeclare`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import psycopg

from swf_celery.db import load_queries

if TYPE_CHECKING:
    from swf_celery.transport.transport import Transport

logger = logging.getLogger(__name__)
QUERIES = load_queries("swf_celery.transport")

#: Expiry (ms) of a queue declared ``auto_delete`` without ``x-expires``.
AUTO_DELETE_EXPIRES_MS = 600_000


def declared_expiry(declare_kwargs: Mapping[str, Any]) -> int:
    """Milliseconds after which an unused queue expires, from kombu's declare arguments.

    0: the queue is declared durable (a pgmq queue of its own; ``swf.queue_ensure`` tells a
    declaration, 0, from a publisher's implicit use, NULL).
    """
    arguments = declare_kwargs.get("arguments") or {}
    expires = arguments.get("x-expires")
    if expires:
        return max(1, int(expires))
    if declare_kwargs.get("auto_delete"):
        return AUTO_DELETE_EXPIRES_MS
    return 0


def redeclare(conn: psycopg.Connection[Any], transport: Transport,
              queues: list[str]) -> list[str]:
    """Declare again, with their bindings, the consumed ``queues`` that expired meanwhile.

    A consumer that stalled longer than its queue's expiry (its pidbox queue, say) would
    otherwise silently stop receiving broadcasts (revoke, inspect, shutdown).
    """
    done: list[str] = []
    for channel in list(transport.channels):
        declared: dict[str, int] = getattr(channel, "declared_expiry", {})
        for queue in queues:
            expires = declared.get(queue)
            if not expires or queue in done:
                continue
            conn.execute(QUERIES["ensure"], {"queue": queue, "expires_ms": expires})
            for exchange, routing_key, arguments in list(channel.state.queue_bindings(queue)):
                key, pattern, _ = channel.typeof(exchange).prepare_bind(
                    queue, exchange, routing_key, arguments)
                conn.execute(QUERIES["bind"], {"exchange": exchange, "routing_key": key or "",
                                               "pattern": pattern, "queue": queue})
            done.append(queue)
    if done:
        logger.warning("swf broker: queues %s had expired while consumed; declared again "
                       "with their bindings", done)
    return done
