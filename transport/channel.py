"""The kombu virtual channel of the ``swf://`` broker: kombu's hooks mapped onto SQL functions.

Every hook is one round trip to a function of ``sql/functions/queues.sql``; queue names travel
as parameters. Bindings live in PostgreSQL (``swf.queue_bindings``), so fanout, topic and
direct routing see the bindings of every process, as kombu's Redis transport does with Redis.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable
from queue import Empty
from typing import TYPE_CHECKING, Any

from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from swf_celery import group_publish
from swf_celery.db import load_queries
from swf_celery.db.errors import first_line
from swf_celery.db.transaction import current as current_transaction
from swf_celery.errors import DatabaseUnavailable, MessageError, QueueNameError
from swf_celery.transport import deliveries, revokes, transient
from swf_celery.transport.deliveries import Delivery, ReadRows
from swf_celery.transport.messages import (
    eta_delay,
    idempotency,
    malformed,
    revoked_stamps,
    revoked_task_ids,
    storable_properties,
)
from swf_celery.transport.names import check_queue_name, listen_channel

if TYPE_CHECKING:
    from swf_celery.transport.transport import Transport

logger = logging.getLogger(__name__)
QUERIES = load_queries("swf_celery.transport")

#: Seconds a topic/direct exchange's bindings are cached; a lookup that finds no queue always
#: reads them afresh, so a just-bound reply queue is never missed.
BINDINGS_TTL = 1.0
#: Attempts at a queue's DDL (create/drop under a short lock_timeout) before giving up.
DDL_ATTEMPTS = 5


class Channel(virtual.Channel):
    """A kombu channel over pgmq queues (see the package docstring for the options)."""

    connection: Transport
    supports_fanout = True
    # Redis semantics: 0 is served first, 9 last.
    default_priority = 0

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.options = connection.options
        self._noack_queues: set[str] = set()
        self._bindings_cache: dict[str, tuple[float, list[tuple[str, str | None, str]]]] = {}
        self._rotation = 0
        #: Acks not yet written. Appended by any thread, flushed in one statement per queue
        #: by the consuming thread before it reads or sleeps.
        self._pending_acks: deque[Delivery] = deque()
        #: Transient queues this channel declared -> their expiry (ms), to declare them
        #: again with their bindings should they expire while consumed.
        self.declared_expiry: dict[str, int] = {}

    # -- queues -------------------------------------------------------------------------

    def _transport(self) -> Transport:
        """The transport, or a connection error when this channel was closed meanwhile.

        A producer pooled by kombu (``kombu.pools`` is keyed by URL, so it outlives the app
        that made it) can hold a channel closed when its connection was lost; the error
        makes kombu's publish retry revive the producer with a new channel.
        """
        transport = self.connection
        if transport is None:
            raise DatabaseUnavailable("the broker channel is closed (its connection was "
                                      "lost or released); reconnecting")
        return transport

    def _execute(self, name: str, params: dict[str, Any]) -> Any:
        try:
            return self._transport().pg_connection().execute(QUERIES[name], params)
        except pg_errors.InvalidParameterValue as exc:
            message = exc.diag.message_primary or str(exc)
            if "queue name" in message:
                raise QueueNameError(message) from None
            raise MessageError(message) from None

    def pgmq_name(self, queue: str, expires_ms: int | None = None, *,
                  refresh: bool = False) -> str:
        """The pgmq name of ``queue``, creating the queue when missing.

        Creating a durable queue is DDL under a short ``lock_timeout``: when its locks are
        taken (a pg_dump, say) it is retried a few times with backoff.
        """
        for attempt in range(DDL_ATTEMPTS):
            try:
                return self.connection.pgmq_name(queue, expires_ms, refresh=refresh)
            except pg_errors.InvalidParameterValue as exc:
                raise QueueNameError(exc.diag.message_primary or str(exc)) from None
            except pg_errors.LockNotAvailable:
                if attempt == DDL_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _on_table(self, kind: str, queue: str, params: dict[str, Any],
                  joined: Any = None) -> Any:
        """Run statement ``kind`` of storage.sql on ``queue``'s messages.

        A durable queue dropped meanwhile is created again; a send to a transient queue that
        expired returns None: the message is dropped (the cached storage stays, so later
        sends are dropped as well; a declaration asks the database again). ``joined``: the
        caller's transaction (``swf.transaction``), where an error is the caller's to handle.
        """
        params = {**params, "queue": queue}
        if joined is not None:
            return joined.execute(self.connection.statement(kind, queue), params)
        conn = self._transport().pg_connection()
        try:
            return conn.execute(self.connection.statement(kind, queue), params)
        except pg_errors.UndefinedTable:
            self.connection.forget_queue(queue)
            return conn.execute(self.connection.statement(kind, queue), params)
        except pg_errors.ForeignKeyViolation:
            logger.debug("swf broker: queue %r expired; message dropped", queue)
            return None

    def prepare_queue_arguments(self, arguments: Any, **kwargs: Any) -> Any:
        """Queue options as RabbitMQ spells them (``expires`` becomes ``x-expires``, in ms)."""
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        # x-expires or auto_delete: a transient queue (rows, no table; see transient.py).
        # Always asked of the database: a cached name may belong to a queue that expired.
        expires = transient.declared_expiry(kwargs)
        self.pgmq_name(queue, expires, refresh=True)
        if expires:
            self.declared_expiry[queue] = expires
            self.connection.expiring.add(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        check_queue_name(queue)
        return bool(self._execute("has_queue", {"queue": queue}).fetchone()[0])

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        check_queue_name(queue)
        for attempt in range(DDL_ATTEMPTS):
            try:
                self._execute("drop", {"queue": queue})
                break
            except pg_errors.LockNotAvailable:  # a durable queue's table is in use
                if attempt == DDL_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
        self.declared_expiry.pop(queue, None)
        self.connection.expiring.discard(queue)
        self.connection.forget_queue(queue)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                     **kwargs: Any) -> None:
        """Delete ``queue`` with its messages and bindings (in every process)."""
        if if_empty and self._size(queue):
            return
        self.state.queue_bindings_delete(queue)
        self._delete(queue)

    def _size(self, queue: str) -> int:
        check_queue_name(queue)
        return int(self._execute("size", {"queue": queue}).fetchone()[0])

    def _purge(self, queue: str) -> int:
        check_queue_name(queue)
        return int(self._execute("purge", {"queue": queue}).fetchone()[0])

    # -- bindings and publishing ----------------------------------------------------------

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str | None,
                    queue: str) -> None:
        check_queue_name(queue)
        self._execute("bind", {"exchange": exchange, "routing_key": routing_key or "",
                               "pattern": pattern, "queue": queue})
        self._bindings_cache.pop(exchange, None)

    def queue_unbind(self, queue: str, exchange: str | None = None, routing_key: str = "",
                     arguments: Any = None, **kwargs: Any) -> None:
        """Remove a binding here and in PostgreSQL."""
        super().queue_unbind(queue, exchange, routing_key, arguments, **kwargs)
        self._execute("unbind", {"exchange": exchange or "amq.direct",
                                 "routing_key": routing_key or "", "queue": queue})
        self._bindings_cache.pop(exchange or "amq.direct", None)

    def get_table(self, exchange: str) -> list[tuple[str, str | None, str]]:
        """The bindings of ``exchange`` as kombu wants them: (routing_key, pattern, queue)."""
        cached = self._bindings_cache.get(exchange)
        now = time.monotonic()
        if cached is not None and now - cached[0] < BINDINGS_TTL:
            return cached[1]
        rows = self._execute("bindings", {"exchange": exchange}).fetchall()
        table = [(r[0], r[1], r[2]) for r in rows]
        self._bindings_cache[exchange] = (now, table)
        return table

    def _lookup(self, exchange: str, routing_key: str, default: str | None = None) -> list[str]:
        cached = self._bindings_cache.get(exchange)
        queues = super()._lookup(exchange, routing_key, default)
        if not queues and exchange and cached is not None \
                and self._bindings_cache.get(exchange) is cached:
            # Found nothing in bindings read earlier: read them afresh (a reply queue bound
            # since). Bindings this lookup has just read are not read twice: an idle
            # worker's heartbeat to an exchange nobody consumes costs one read, not two.
            self._bindings_cache.pop(exchange, None)
            queues = super()._lookup(exchange, routing_key, default)
        return queues

    def prepare_message(self, body: Any, priority: int | None = None,
                        content_type: str | None = None, content_encoding: str | None = None,
                        headers: dict[str, Any] | None = None,
                        properties: dict[str, Any] | None = None) -> dict[str, Any]:
        """kombu's message dict, without the properties JSON cannot carry (an AMQP transport
        drops every property outside AMQP's own; see :func:`storable_properties`)."""
        if properties:
            properties, dropped = storable_properties(properties)
            if dropped:
                logger.debug("swf broker: properties %s are not JSON; left out of the message",
                             ", ".join(sorted(dropped)))
        message: dict[str, Any] = super().prepare_message(
            body, priority, content_type, content_encoding, headers, properties)
        return message

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        # Inside ``swf.transaction(conn)`` the message is a row of the caller's transaction
        # (its own durability); the queue's bookkeeping stays on the broker's connection.
        joined = current_transaction()
        delay = eta_delay(message, self.options.eta_threshold)
        headers = message.get("headers")
        limited = isinstance(headers, dict) and isinstance(headers.get("swf_flow"), dict)
        once = idempotency(message)
        kept = group_publish.current()
        if kept is not None:
            if not limited and once is None:
                # Checks the name and creates a missing durable queue now, as a send does.
                self._transport().statement("send_many", queue)
                kept.add(self, queue, message, delay, joined)
                return
            kept.send()  # what the group kept goes first
        params: dict[str, Any] = {"message": Jsonb(message), "delay": delay,
                                  "commit": self._publish_commit(joined)}
        kind = "send"
        try:
            if limited:
                self.connection.mark_limited(queue, joined)
            if once is not None:
                kind = "send_once"
                params.update(once)
            # Checks the name and creates a missing durable queue; a transient queue that
            # expired is not recreated (undefined_object): its message is dropped.
            self._on_table(kind, queue, params, joined)
        except pg_errors.UndefinedObject:
            logger.debug("swf broker: queue %r expired; message dropped", queue)

    def send_many(self, queue: str, messages: list[dict[str, Any]], delays: list[int],
                  joined: Any = None) -> None:
        """Store ``messages`` (kombu's message dicts, in publish order, each kept hidden for
        its delay in ``delays``) on ``queue`` in one insert (:mod:`swf_celery.group_publish`)."""
        params = {"messages": Jsonb(messages), "delays": delays,
                  "commit": self._publish_commit(joined)}
        try:
            self._on_table("send_many", queue, params, joined)
        except pg_errors.UndefinedObject:
            logger.debug("swf broker: queue %r expired; %d messages dropped", queue,
                         len(messages))

    def _publish_commit(self, joined: Any) -> str | None:
        """A publish's ``synchronous_commit``: the caller's own inside its transaction."""
        if joined is not None:
            return None
        return "on" if self.options.durable_publish else "off"

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str,
                    **kwargs: Any) -> None:
        pidbox = exchange.endswith(".pidbox")
        revoked = revoked_task_ids(message) if pidbox else None
        stamps = revoked_stamps(message) if pidbox and not revoked else None
        if revoked:
            # A revoke also deletes the task's queued or delayed message, so it survives
            # worker restarts (and the task never occupies a worker).
            self._execute("fanout_revoke", {"exchange": exchange, "message": Jsonb(message),
                                            "task_ids": revoked})
        elif stamps:
            # Recorded with the broadcast: workers apply it before they hand over a stamped
            # message read after it, and when they start (revokes.py).
            self._execute("fanout_revoke_stamped", {
                "exchange": exchange, "message": Jsonb(message), "headers": Jsonb(stamps)})
        else:
            self._execute("fanout", {"exchange": exchange, "message": Jsonb(message)})

    # -- consuming ------------------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str,
                      **kwargs: Any) -> Any:
        """Consume ``queue``; idle consumers are woken by NOTIFY on it."""
        if no_ack:
            self._noack_queues.add(queue)
        if self.options.wakeups:
            self.connection.listen(listen_channel(self.pgmq_name(queue)))
        self.connection.ensure_keeper()
        self.connection.load_revokes()
        result = super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        self.connection.poke()  # an event loop reads the new queue at once
        return result

    def basic_qos(self, prefetch_size: int = 0, prefetch_count: int = 0,
                  apply_global: bool = False) -> None:
        """Change the prefetch window; a wider one is filled at once (the loop is poked)."""
        super().basic_qos(prefetch_size, prefetch_count, apply_global)
        self.connection.poke()

    def basic_cancel(self, consumer_tag: str) -> Any:
        """Stop consuming; the queue is no longer read as no-ack."""
        queue = self._tag_to_queue.get(consumer_tag)
        result = super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._noack_queues.discard(queue)
        return result

    def _read_quantity(self) -> int:
        estimate = self.qos.can_consume_max_estimate()
        if estimate is None:
            return self.options.read_batch
        return min(int(estimate), self.options.read_batch)

    def _read(self, queues: list[str], qty: int,
              no_ack: Iterable[bool] | None = None) -> list[tuple[str, dict[str, Any]]]:
        flags = list(no_ack) if no_ack is not None else [q in self._noack_queues for q in queues]
        return self._read_once(queues, flags, qty)

    def consumed_queues(self) -> list[str]:
        """Queues this channel reads now (it has consumers and prefetch capacity)."""
        if not self._consumers or not self.qos.can_consume():
            return []
        return list(dict.fromkeys(self._active_queues))

    def _read_once(self, queues: list[str], flags: list[bool],
                   qty: int) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for queue, noack in zip(queues, flags, strict=True):
            if len(out) >= qty:
                break
            out.extend(self._read_queue(queue, noack, qty - len(out))[0])
        return out

    def _read_queue(self, queue: str, noack: bool,
                    qty: int) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        """One read of up to ``qty`` messages of ``queue``: (payloads, rows read).

        The read also deletes the acks pending on that queue (one round trip for both).
        """
        rows = self.read_rows(queue, noack, qty)
        return self.payloads(queue, noack, rows), len(rows)

    def read_rows(self, queue: str, noack: bool, qty: int) -> ReadRows:
        """The rows (msg_id, receipt, message, priority) of a read, in priority order; the
        read also writes the queue's pending acks (each on its receipt). A read that
        delivers nothing says when the queue's next message is due (:class:`ReadRows`).

        Thread-safe: the event loop runs it in its reader thread (:mod:`.eventloop`).
        """
        params: dict[str, Any] = {"qty": qty, "vt": self.options.visibility_timeout}
        acks: list[int] = []
        if not noack:
            acks, params["receipts"] = self._take_acks(queue)
            params["acks"] = acks
        if not noack and self.connection.limited(queue):
            params.setdefault("acks", [])
            params.setdefault("receipts", [])
            rows = self._execute("read_limited", {**params, "queue": queue}).fetchall()
        else:
            rows = self._on_table("pop" if noack else "read", queue, params).fetchall()
        # A read returns the acks it wrote as rows without a receipt, and its due time as
        # a row without an id.
        done = [r[0] for r in rows if r[0] is not None and r[1] is None]
        if done or acks:
            deliveries.report_stale("ack", queue, acks, done)
        out = ReadRows(sorted((r for r in rows if r[1] is not None),
                              key=lambda r: (r[3], r[0])))
        for r in rows:
            if r[0] is None:
                out.due_known, out.due = True, r[2]
        return out

    def payloads(self, queue: str, noack: bool,
                 rows: list[Any]) -> list[tuple[str, dict[str, Any]]]:
        """The kombu payloads of read ``rows``: messages read too often or malformed are
        dead-lettered, revoked ids of redelivered ones reach the worker's revoked set."""
        limit = self.options.max_deliveries
        too_often = [(r[0], r[1]) for r in rows if not noack and limit and r[1] > limit]
        if too_often:
            self.reject([Delivery(queue, i, receipt) for i, receipt in too_often],
                        requeue=False, reason=f"delivered more than {limit} times")
        self._check_revoked(rows)
        out: list[tuple[str, dict[str, Any]]] = []
        dead = {i for i, _ in too_often}
        for msg_id, read_ct, message, _priority in rows:
            if msg_id in dead:
                continue
            payload = self._payload(queue, msg_id, read_ct, message, noack)
            if payload is not None:
                out.append((queue, payload))
        return out

    def _take_acks(self, queue: str) -> tuple[list[int], list[int]]:
        """Remove the pending acks of ``queue`` for its read to delete and return their ids
        and receipts (none when acks are archived: those stay for :meth:`flush_acks`)."""
        pending = self._pending_acks
        ids: list[int] = []
        receipts: list[int] = []
        if not pending or self.options.archive_acked:
            return ids, receipts
        for _ in range(len(pending)):  # others append meanwhile: those stay at the end
            item = pending.popleft()
            if item.queue == queue:
                ids.append(item.msg_id)
                receipts.append(item.receipt)
            else:
                pending.append(item)
        return ids, receipts

    def consuming(self) -> list[str]:
        """The queues this channel has consumers on, whatever its prefetch window."""
        return list(dict.fromkeys(self._active_queues)) if self._consumers else []

    def _check_revoked(self, rows: list[Any]) -> None:
        """Hand revoked task ids of redelivered messages, and the revokes by stamped header
        recorded since the last look when a message is stamped, to the worker
        (:mod:`.revokes`)."""
        ids = [m["headers"]["id"] for _, read_ct, m, _ in rows
               if read_ct > 1 and isinstance(m, dict) and isinstance(m.get("headers"), dict)
               and isinstance(m["headers"].get("id"), str)]
        if ids:
            revokes.check(self.connection.pg_connection(), ids)
        if any(revokes.stamped(m) for _, _, m, _ in rows):
            revokes.apply_stamps(self.connection.pg_connection())

    def flush_acks(self) -> None:
        """Write the acks collected since the last flush (one statement per queue); a stale
        delivery's ack is logged and changes nothing (:mod:`.deliveries`)."""
        taken: list[Delivery] = []
        pending = self._pending_acks
        while pending:
            taken.append(pending.popleft())
        for queue, (ids, receipts) in deliveries.by_queue(taken).items():
            params = {"queue": queue, "ids": ids, "receipts": receipts}
            if self.options.archive_acked:
                row = self._execute("ack", {**params, "archive": True}).fetchone()
                deliveries.report_stale("ack", queue, ids, int(row[0]))
            else:
                cursor = self._on_table("delete", queue, params)
                if cursor is not None:
                    deliveries.report_stale("ack", queue, ids, [r[0] for r in cursor])

    def close(self) -> None:
        """Write pending acks, then close as kombu does (restoring unacked messages)."""
        if not self.closed and self.connection is not None:
            try:
                self.flush_acks()
            except Exception:  # the connection is gone: the messages reappear after their VT
                logger.warning("swf broker: %d acks lost at close", len(self._pending_acks))
        super().close()

    def _get_many(self, queues: list[str], timeout: float | None = None) -> None:
        qty = self._read_quantity()
        if qty <= 0:
            self.flush_acks()
            raise Empty()
        unique = list(dict.fromkeys(queues))
        if len(unique) > 1:  # rotate so that no queue starves the others
            self._rotation = (self._rotation + 1) % len(unique)
            unique = unique[self._rotation:] + unique[:self._rotation]
        got = self._read(unique, qty)  # each read deletes its queue's pending acks
        self.flush_acks()  # the acks of queues not read
        if not got:
            raise Empty()
        for queue, payload in got:
            self.connection._deliver(payload, queue)

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        got = self._read([check_queue_name(queue)], 1)
        if not got:
            raise Empty()
        return got[0][1]

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """Get one message synchronously (no_ack: removed at once)."""
        self.flush_acks()
        got = self._read([check_queue_name(queue)], 1, no_ack=[no_ack])
        if not got:
            return None
        message = self.Message(got[0][1], channel=self)
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
            self.connection.ensure_keeper()
        return message

    def _payload(self, queue: str, msg_id: int, read_ct: int, message: Any,
                 no_ack: bool) -> dict[str, Any] | None:
        """The kombu payload of a read message, or None when it is malformed (dead-lettered)."""
        problem = malformed(message)
        if problem is not None:
            logger.error("swf broker: message %s on queue %r is malformed (%s); dead-lettered",
                         msg_id, queue, problem)
            if not no_ack:
                self.reject([Delivery(queue, msg_id, read_ct)], requeue=False,
                            reason=f"malformed: {problem}")
            return None
        props = message["properties"]
        if not props.get("delivery_tag"):
            props["delivery_tag"] = str(uuid.uuid4())
        redelivered = read_ct > 1
        info = dict(props.get("delivery_info") or {})
        info.update(deliveries.delivery_info(queue, msg_id, read_ct), redelivered=redelivered)
        props["delivery_info"] = info
        message["redelivered"] = redelivered
        if not isinstance(message.get("headers"), dict):
            message["headers"] = {}
        return message

    def held(self) -> list[Delivery]:
        """The deliveries this channel holds unacknowledged."""
        qos = self._qos
        if qos is None:
            return []
        dirty = set(qos._dirty)
        out = []
        for tag, message in list(qos._delivered.items()):
            if tag in dirty:
                continue
            delivery = deliveries.of(message.delivery_info)
            if delivery is not None:
                out.append(delivery)
        return out

    # -- acknowledgement ------------------------------------------------------------------

    def _held_message(self, delivery_tag: str) -> Delivery | None:
        try:
            info = self.qos.get(delivery_tag).delivery_info
        except KeyError:
            return None
        return deliveries.of(info)

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        """Acknowledge: delete the message (or archive it with ``archive_acked``), unless it
        was delivered again since (:mod:`.deliveries`)."""
        held = self._held_message(delivery_tag)
        if held is not None:
            # Written by the consuming thread at its next read or before it sleeps, batched
            # with other acks (an ack lost in a crash only means a redelivery).
            self._pending_acks.append(held)
        super().basic_ack(delivery_tag)
        self._poke()

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """Reject: visible again at once (requeue) or dead-lettered, unless the message was
        delivered again since (:mod:`.deliveries`)."""
        if self.connection is None:
            # Closed (its broker connection was lost and the worker reconnected): the
            # message was restored at close, or reappears after its visibility timeout.
            logger.debug("swf broker: reject of %s on a closed channel ignored", delivery_tag)
            return
        held = self._held_message(delivery_tag)
        if held is not None:
            try:
                self.reject([held], requeue=requeue, reason="rejected")
            finally:
                # Not held any more, whatever the statement did: a reject the database did
                # not take (it was restarting) leaves the message hidden until its visibility
                # timeout, then it is delivered again; held, the keeper would extend it for
                # as long as the worker lives, and it would never run.
                self.qos.reject(delivery_tag, requeue=False)
        else:
            super().basic_reject(delivery_tag, requeue=requeue)
        self._poke()

    def reject(self, held: list[Delivery], *, requeue: bool, reason: str) -> None:
        """Make ``held`` visible again at once (``requeue``) or dead-letter them with
        ``reason``; deliveries no longer this consumer's are left alone (and logged)."""
        for queue, (ids, receipts) in deliveries.by_queue(held).items():
            row = self._execute("reject", {"queue": queue, "ids": ids, "requeue": requeue,
                                           "reason": reason, "receipts": receipts}).fetchone()
            deliveries.report_stale("requeue" if requeue else "reject", queue, ids,
                                    int(row[0]))

    def _poke(self) -> None:
        # A task finishing after its channel was closed (the broker connection was lost
        # and the worker reconnected) acks on that channel: kombu's close took its
        # connection. Its message was restored at close, or reappears after its
        # visibility timeout; nothing to wake.
        if self.connection is not None:
            self.connection.poke()

    def _restore(self, message: Any) -> None:
        # Unacked at shutdown, or delivered to a queue nobody consumes any more: make it
        # visible again at once rather than after the visibility timeout. When the database
        # does not take it (a worker stopping while the server restarts), the message is
        # still a row of its queue and reappears after its visibility timeout: that is
        # logged, and kombu's "unable to restore" dump of message bodies into a temporary
        # file is not made.
        delivery = deliveries.of(message.delivery_info)
        if delivery is not None:
            try:
                self.reject([delivery], requeue=True, reason="restored")
            except Exception as exc:  # noqa: BLE001 - the row stays: it reappears after its VT
                logger.warning("swf broker: message %d of queue %r not given back at close "
                               "(%s); it runs again after its visibility timeout",
                               delivery.msg_id, delivery.queue, first_line(exc))
            return
        super()._restore(message)
