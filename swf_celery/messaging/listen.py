"""Listening on channels: a dedicated connection per listener, survives server restarts.

:func:`listen` opens its own connection, runs ``LISTEN swf_<channel>`` and returns only
once the LISTEN is in place, so every NOTIFY committed after it returns is delivered. The
connection is the library's one LISTEN plumbing (:mod:`swf_celery.db.listening`): its
reading thread only reads, into a bounded buffer, so a slow or blocked reader never keeps
PostgreSQL from trimming its notification queue. Notifications are delivered

- to that buffer, which you read by iterating (``for n in listener``), with
  :meth:`Listener.get`, or with ``async for n in listener`` in asyncio code; or
- to ``callback(n)``, called by the listener's dispatch thread when one is given (a callback
  that blocks holds only that thread: the buffer fills, then drops and reports a gap).

A ``kind == "gap"`` notification (and :attr:`Listener.possible_gap`) says notifications may
have been missed: after a reconnect (NOTIFYs sent while the listener was away are lost,
Postgres does not keep them; :attr:`Listener.reconnects` counts them), after a buffer
overflow (:attr:`Listener.dropped`), and when the database skipped NOTIFYs because its
notification queue was too full. Callers then re-read history
(:func:`swf_celery.read_pending`). :func:`unlisten` (or :meth:`Listener.close`) stops the
threads and closes the connection.

A notification is a hint, not a fact: any session that can connect may NOTIFY any channel
with any payload. A ``"message"`` names a stored message to fetch (:func:`get_message`
reads the channel's table, which checks privileges); a ``"notify"`` payload is whatever its
sender chose.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from swf_celery.db import DatabaseHandle, application_name, resolve
from swf_celery.db.listening import ListenConnection, Received
from swf_celery.errors import ArgumentError
from swf_celery.messaging import channels
from swf_celery.messaging.send import MESSAGE_ID_KEY, message_id_of

log = logging.getLogger(__name__)

Kind = Literal["message", "notify", "gap"]

#: ``application_name`` of listener connections (visible in pg_stat_activity).
APPLICATION_NAME = application_name("listen")


@dataclass(frozen=True)
class Notification:
    """One delivery on a channel.

    ``kind`` is ``"message"`` for a stored message (:func:`~swf_celery.send_with_notify`, and
    the workflow engine's events on ``workflow_events``): ``message_id`` set, fetch the body
    with :func:`~swf_celery.get_message` (a workflow event's ``payload`` also carries the
    event: ``n.json()``); ``"notify"`` for a bare NOTIFY such as
    :func:`~swf_celery.notify_only` (``payload`` set); and
    ``"gap"`` when notifications may have been missed (a reconnect, a full buffer, NOTIFYs
    the database skipped): re-read history.
    """

    channel: str
    kind: Kind
    message_id: int | None = None
    payload: str | None = None
    #: Backend pid of the sender (0 for a gap).
    sender_pid: int = 0
    received_at: float = field(default_factory=time.time)

    @property
    def is_gap(self) -> bool:
        """True for the marker delivered after a reconnect."""
        return self.kind == "gap"

    def json(self) -> Any:
        """The payload parsed as JSON (e.g. a workflow event ``{"swf_message_id", "run_id",
        "step", "status"}``)."""
        if self.payload is None:
            raise ArgumentError(f"a {self.kind!r} notification has no payload")
        return json.loads(self.payload)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``swf-celery listen --json`` prints)."""
        return {"channel": self.channel, "kind": self.kind, "message_id": self.message_id,
                "payload": self.payload, "sender_pid": self.sender_pid,
                "received_at": self.received_at}


class Listener:
    """A running LISTEN on one channel; see the module docstring. Create with :func:`listen`."""

    def __init__(
        self, channel: str, repo: DatabaseHandle | None = None, *,
        callback: Callable[[Notification], Any] | None = None,
        buffer: int = 100_000, max_backoff: float = 5.0,
    ) -> None:
        ch = channels.resolve(channel)
        self.channel = ch.name
        #: The Postgres channel actually LISTENed to (``swf_<channel>``).
        self.notify_channel = ch.notify_channel
        user_callback = callback

        def dispatch(item: Received) -> None:
            assert user_callback is not None
            user_callback(self._notification(item))

        self._listen = ListenConnection(
            resolve(repo).dsn, [ch.notify_channel], name=f"swf-listen-{ch.name}",
            buffer=buffer, max_backoff=max_backoff,
            callback=dispatch if callback is not None else None)
        #: Set after a reconnect, a buffer overflow or NOTIFYs the database skipped:
        #: notifications may have been missed. Callers clear it once they have re-read.
        self.possible_gap = self._listen.possible_gap
        #: Set while the LISTEN connection is up.
        self.connected = self._listen.connected
        self._thread = self._listen.thread

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("connected" if self.connected.is_set()
                                              else "reconnecting")
        return f"<Listener {self.channel!r} {state}>"

    @property
    def reconnects(self) -> int:
        """How many times the connection was re-established."""
        return self._listen.reconnects

    @property
    def dropped(self) -> int:
        """Notifications dropped because the buffer was full."""
        return self._listen.dropped

    @property
    def received(self) -> int:
        """Notifications read off the connection so far (delivered or dropped)."""
        return self._listen.received

    # -- reading ------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Notification | None:
        """The next notification; None on timeout or once the listener is closed and drained."""
        item = self._listen.get(timeout)
        return None if item is None else self._notification(item)

    def __iter__(self) -> Iterator[Notification]:
        """Block for each notification in turn; ends when the listener is closed."""
        while True:
            item = self.get()
            if item is None:
                return
            yield item

    def __aiter__(self) -> AsyncIterator[Notification]:
        return self

    async def __anext__(self) -> Notification:
        """``async for``: wait without blocking the event loop; ends when closed."""
        item = await self._listen.aget()
        if item is None:
            raise StopAsyncIteration
        return self._notification(item)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._listen.closed

    # -- stopping -----------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening and close the connection (idempotent)."""
        self._listen.close(timeout)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _notification(self, item: Received) -> Notification:
        if item.gap is not None:
            return Notification(self.channel, "gap", received_at=item.received_at)
        message_id = message_id_of(item.payload)
        if message_id is not None:
            # A workflow event carries the event beside its id: kept as the payload.
            bare = item.payload == f'{{"{MESSAGE_ID_KEY}":{message_id}}}'
            return Notification(self.channel, "message", message_id=message_id,
                                payload=None if bare else item.payload,
                                sender_pid=item.sender_pid, received_at=item.received_at)
        return Notification(self.channel, "notify", payload=item.payload,
                            sender_pid=item.sender_pid, received_at=item.received_at)


def listen(
    channel: str, repo: DatabaseHandle | None = None, *,
    callback: Callable[[Notification], Any] | None = None, buffer: int = 100_000,
    max_backoff: float = 5.0,
) -> Listener:
    """Start listening on ``channel``; returns once the LISTEN is in place.

    Without ``callback`` read the :class:`Listener` by iterating it (threads) or with
    ``async for`` (asyncio; see also :func:`alisten`). With ``callback``, it is called in
    the listener's dispatch thread for each :class:`Notification`, never in the thread that
    reads the connection. ``buffer`` bounds undelivered notifications (overflow drops and
    reports a gap); ``max_backoff`` caps the delay
    between reconnect attempts. ``listen("workflow_events", repo)`` delivers the workflow
    engine's run events. Raises :class:`~swf_celery.errors.ChannelNameError` for a bad
    name and :class:`~swf_celery.errors.DatabaseUnavailable` if the server is unreachable.
    """
    return Listener(channel, repo, callback=callback, buffer=buffer, max_backoff=max_backoff)


async def alisten(channel: str, repo: DatabaseHandle | None = None, **options: Any) -> Listener:
    """:func:`listen` for asyncio code: connects without blocking the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: listen(channel, repo, **options))


def unlisten(listener: Listener, repo: DatabaseHandle | None = None) -> None:
    """Stop ``listener`` and close its connection (``repo`` is accepted for seed parity)."""
    if not isinstance(listener, Listener):
        raise ArgumentError(
            f"unlisten() takes a Listener from listen(), not {type(listener).__name__}")
    listener.close()
