"""Sending on channels: persisted messages with NOTIFY, bare NOTIFY, and history.

- :func:`send_with_notify` stores a JSON message in the channel's pgmq queue and, in the
  same transaction, NOTIFYs ``swf_<channel>`` with the payload
  ``{"swf_message_id": <id>}``. Listeners hear of a message exactly when it is committed;
  the body has no size limit because it travels in the queue, not in the NOTIFY. The
  NOTIFY is a hint: while PostgreSQL's notification queue is half full or more (a listener
  stopped reading) it is skipped and the message is still stored; listeners report a gap.
- :func:`notify_only` NOTIFYs ``swf_<channel>`` with a payload and stores nothing. Postgres
  refuses payloads of 8000 bytes or more; we raise :class:`PayloadTooLarge` before
  sending, so nothing is ever truncated. While the notification queue is half full or more
  it raises :class:`~swf_celery.errors.NotificationQueueFull` instead of sending.
- History: :func:`get_message`, :func:`read_pending` and :func:`acknowledge` read and
  retire stored messages, e.g. after a listener reports a possible gap.

Channel names and their Postgres mapping are described in :mod:`swf_celery.messaging.channels`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from swf_celery.db import (
    Database,
    DatabaseHandle,
    ErrorMap,
    load_queries,
    resolve,
    translate_errors,
)
from swf_celery.db.transaction import current as current_transaction
from swf_celery.errors import (
    ArgumentError,
    ChannelNameError,
    NotificationQueueFull,
    PayloadError,
    PayloadTooLarge,
)
from swf_celery.messaging import channels

QUERIES = load_queries(__package__)

#: Postgres refuses a NOTIFY payload of this many bytes or more (BLCKSZ - NAMEDATALEN - 128).
NOTIFY_PAYLOAD_LIMIT = 8000
# A JSON \u0000 escape (not an escaped backslash followed by "u0000"): jsonb refuses it.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
#: Key of the NOTIFY payload that announces a stored message.
MESSAGE_ID_KEY = "swf_message_id"
#: ``swf.notify_required`` refuses a NOTIFY while the notification queue is too full.
_QUEUE_FULL: ErrorMap = {pg_errors.ProgramLimitExceeded: NotificationQueueFull}

# Channels whose queue this process has already ensured, per database: the first send to a
# channel pays for swf.ensure_channel, later ones go straight to the insert.
_ensured: set[tuple[str, str]] = set()
_ensured_lock = threading.Lock()


@dataclass(frozen=True)
class Message:
    """A message stored on a channel by :func:`send_with_notify`."""

    channel: str
    id: int
    body: Any
    enqueued_at: datetime
    read_count: int
    #: True once acknowledged with ``archive=True`` (it is no longer pending).
    archived: bool


def send_with_notify(
    channel: str, message: Any, repo: DatabaseHandle | psycopg.Connection[Any] | None = None,
) -> int:
    """Store ``message`` (anything JSON-serialisable) on ``channel``; return its id.

    The id is an ``int`` (pgmq's message id), where the reference returns it as a string:
    ``str(id)`` is that form, and :func:`get_message` and :func:`acknowledge` take either.

    The message goes into the channel's pgmq queue (created on first use) and a NOTIFY
    carrying its id is sent in the same transaction. ``repo`` may also be an open psycopg
    connection: the message and its NOTIFY then join that connection's current
    transaction and commit or roll back with the caller's own writes (an outbox), as they
    do inside ``with swf.transaction(conn):``.
    Raises :class:`ChannelNameError` for an invalid or reserved channel and
    :class:`PayloadError` when ``message`` is not JSON.
    """
    ch = channels.resolve(channel)
    channels.check_sendable(channel)
    body = _to_json(message, what="message")
    if "\\u0000" in body and _JSON_NUL.search(body):
        raise PayloadError("message contains a NUL character, which PostgreSQL jsonb cannot hold")
    query = _tables(QUERIES["send"], ch.queue)
    params = {"notify_channel": ch.notify_channel, "message": body}

    def send(conn: psycopg.Connection[Any]) -> int:
        return int(conn.execute(query, params).fetchone()[0])  # type: ignore[index]

    joined = current_transaction()
    if joined is not None:  # inside swf.transaction(conn): that transaction's outbox
        repo = joined
    if isinstance(repo, psycopg.Connection):
        # Not cached: the queue may be created inside this very transaction, which the
        # caller may still roll back.
        with translate_errors():
            _ensure_on(repo, ch)
            return send(repo)
    db = resolve(repo)
    for attempt in (1, 2):
        _ensure(db, ch)
        try:
            with db.single_statement() as conn:
                return send(conn)
        except Exception as exc:
            # The queue was dropped behind our back: forget it and create it again, once.
            if attempt == 1 and isinstance(exc.__cause__, pg_errors.UndefinedTable):
                with _ensured_lock:
                    _ensured.discard((db.dsn, ch.name))
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def notify_only(
    channel: str, payload: Any, repo: DatabaseHandle | psycopg.Connection[Any] | None = None,
) -> None:
    """NOTIFY ``channel`` with ``payload`` without storing anything.

    A ``str`` is sent as is; anything else is sent as compact JSON. ``repo`` may be an
    open psycopg connection, whose transaction the NOTIFY then joins (it is delivered at
    that COMMIT). Raises :class:`PayloadTooLarge` when the payload is 8000 bytes or more
    (Postgres' limit), :class:`PayloadError` for a NUL character or a payload in the
    reserved stored-message form ``{"swf_message_id": …}``, :class:`ChannelNameError` for a
    bad channel, and :class:`~swf_celery.errors.NotificationQueueFull` while PostgreSQL's
    notification queue is half full or more (a listener stopped reading; nothing is sent,
    and on a caller's connection its transaction is aborted): unlike the library's own
    NOTIFYs, which are hints and are then skipped, this one was asked for by name.
    """
    ch = channels.resolve(channel)
    channels.check_sendable(channel)
    text = encode_payload(payload)
    params = {"notify_channel": ch.notify_channel, "payload": text}
    if isinstance(repo, psycopg.Connection):
        with translate_errors(_QUEUE_FULL):
            repo.execute(QUERIES["notify"], params)
        return
    with resolve(repo).single_statement(errors=_QUEUE_FULL) as conn:
        conn.execute(QUERIES["notify"], params)


def encode_payload(payload: Any) -> str:
    """The NOTIFY text for ``payload``, or a clear error if Postgres could not carry it."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError(f"payload bytes are not UTF-8 ({exc}); send text or JSON") from None
    text = payload if isinstance(payload, str) else _to_json(payload, what="payload")
    if "\x00" in text:
        raise PayloadError("payload contains a NUL character, which PostgreSQL text cannot hold")
    size = len(text.encode("utf-8"))
    if size >= NOTIFY_PAYLOAD_LIMIT:
        raise PayloadTooLarge(
            f"NOTIFY payload is {size} bytes; PostgreSQL accepts at most "
            f"{NOTIFY_PAYLOAD_LIMIT - 1}. Use send_with_notify() for large messages "
            "(the body goes into the channel's queue, the NOTIFY carries only its id)")
    if MESSAGE_ID_KEY in text and message_id_of(text) is not None:
        raise PayloadError(
            f"payload {text[:60]!r} has the form listeners read as a stored message "
            f'({{"{MESSAGE_ID_KEY}": …, …}}); use send_with_notify() or another key')
    return text


def message_id_of(payload: str) -> int | None:
    """The message id if ``payload`` announces a stored message, else None.

    The announcement is ``{"swf_message_id": <id>}``, possibly with more keys: the workflow
    engine's events carry the event itself beside its id.
    """
    if not payload.startswith("{") or MESSAGE_ID_KEY not in payload:
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if isinstance(data, dict) and MESSAGE_ID_KEY in data:
        value = data[MESSAGE_ID_KEY]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def get_message(channel: str, message_id: int | str,
                repo: DatabaseHandle | None = None) -> Message | None:
    """The stored message ``message_id`` of ``channel`` (pending or archived), or None."""
    ch = channels.resolve(channel)
    with resolve(repo).connection() as conn:
        queue = _registered_queue(conn, ch)
        row = None if queue is None else conn.execute(
            _tables(QUERIES["get_message"], queue), {"id": int(message_id)}).fetchone()
    return _message(ch.name, row) if row else None


def read_pending(
    channel: str, repo: DatabaseHandle | None = None, *, after_id: int = 0, limit: int = 100,
) -> list[Message]:
    """Messages of ``channel`` not yet acknowledged, oldest first, with id > ``after_id``.

    Reading does not consume: call :func:`acknowledge` for the ones you have handled.
    Page with ``after_id=messages[-1].id``.
    """
    ch = channels.resolve(channel)
    if not isinstance(limit, int) or limit < 1:
        raise ArgumentError(f"limit must be a positive integer, not {limit!r}")
    with resolve(repo).connection() as conn:
        queue = _registered_queue(conn, ch)
        rows = [] if queue is None else conn.execute(
            _tables(QUERIES["read_pending"], queue),
            {"after_id": int(after_id), "limit": limit}).fetchall()
    return [_message(ch.name, row) for row in rows]


def acknowledge(
    channel: str, message_ids: int | str | Iterable[int | str],
    repo: DatabaseHandle | None = None, *, archive: bool = True,
) -> list[int]:
    """Retire messages of ``channel`` so they are no longer pending; return the ids retired.

    ``archive=True`` (default) moves them to the channel's pgmq archive, where
    :func:`get_message` still finds them; ``archive=False`` deletes them. Ids that are not
    pending are skipped (acknowledging twice is harmless).
    """
    ch = channels.resolve(channel)
    ids = ([int(message_ids)] if isinstance(message_ids, (int, str))
           else [int(i) for i in message_ids])
    if not ids:
        return []

    with resolve(repo).connection() as conn:
        queue = _registered_queue(conn, ch)
        rows = [] if queue is None else conn.execute(
            QUERIES["archive" if archive else "delete"], {"queue": queue, "ids": ids}).fetchall()
    return sorted(int(r[0]) for r in rows)


def _ensure(db: Database, ch: channels.ChannelNames) -> None:
    key = (db.dsn, ch.name)
    if key in _ensured:
        return
    with db.connection() as conn:
        _ensure_on(conn, ch)
    with _ensured_lock:
        _ensured.add(key)


def _ensure_on(conn: psycopg.Connection[Any], ch: channels.ChannelNames) -> None:
    try:
        conn.execute(QUERIES["ensure_channel"], {"channel": ch.name, "queue": ch.queue})
    except pg_errors.RaiseException as exc:
        # swf.ensure_channel refused: the queue belongs to another channel, or is a pgmq
        # queue created outside swf-celery.
        raise ChannelNameError(exc.diag.message_primary or str(exc)) from None


def _registered_queue(conn: psycopg.Connection[Any], ch: channels.ChannelNames) -> str | None:
    row = conn.execute(QUERIES["channel_queue"], {"channel": ch.name}).fetchone()
    return str(row[0]) if row else None


def _tables(query: str, queue: str) -> sql.Composed:
    # queue comes from swf.channels, written only for validated channel names.
    return sql.SQL(query).format(queue_table=sql.Identifier("q_" + queue),
                                 archive_table=sql.Identifier("a_" + queue))


def _message(channel: str, row: Any) -> Message:
    return Message(channel=channel, id=int(row[0]), body=row[1], enqueued_at=row[2],
                   read_count=int(row[3]), archived=bool(row[4]))


def _to_json(value: Any, *, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{what} is not JSON-serialisable: {exc}") from None
