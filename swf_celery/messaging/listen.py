"""Listening on channels: a dedicated connection per listener, survives server restarts.

:func:`listen` opens its own connection, runs ``LISTEN swf_<channel>`` and returns only
once the LISTEN is in place, so every NOTIFY committed after it returns is delivered. A
background thread reads notifications and delivers them

- to a buffer you read by iterating (``for n in listener``), with :meth:`Listener.get`, or
  with ``async for n in listener`` in asyncio code; or
- to ``callback(n)``, called in the listener's thread, when one is given.

If the connection drops (server restart, network), the thread reconnects with
exponential backoff, re-LISTENs, sets :attr:`Listener.possible_gap`, counts
:attr:`Listener.reconnects` and delivers a ``kind == "gap"`` notification: NOTIFYs sent
while it was away are lost (Postgres does not keep them), so callers re-read history
(:func:`swf_celery.read_pending`). :func:`unlisten` (or :meth:`Listener.close`) stops the
thread and closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from swf_celery.db import DatabaseHandle, application_name, named_dsn, resolve, translate_errors
from swf_celery.errors import ArgumentError
from swf_celery.messaging import channels
from swf_celery.messaging.send import message_id_of

log = logging.getLogger(__name__)

Kind = Literal["message", "notify", "gap"]

#: ``application_name`` of listener connections (visible in pg_stat_activity).
APPLICATION_NAME = application_name("listen")


@dataclass(frozen=True)
class Notification:
    """One delivery on a channel.

    ``kind`` is ``"message"`` for :func:`~swf_celery.send_with_notify` (``message_id`` set,
    fetch the body with :func:`~swf_celery.get_message`), ``"notify"`` for a bare NOTIFY
    such as :func:`~swf_celery.notify_only` or a workflow event (``payload`` set), and
    ``"gap"`` after a reconnect: notifications may have been missed, re-read history.
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
        """The payload parsed as JSON (e.g. a workflow event ``{"run_id", "step", "status"}``)."""
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
        buffer: int = 100_000, max_backoff: float = 5.0, poll_interval: float = 0.25,
    ) -> None:
        ch = channels.resolve(channel)
        self.channel = ch.name
        #: The Postgres channel actually LISTENed to (``swf_<channel>``).
        self.notify_channel = ch.notify_channel
        self._dsn = resolve(repo).dsn
        self._callback = callback
        self._buffer = max(1, buffer)
        self._max_backoff = max_backoff
        self._poll = poll_interval
        #: Set after a reconnect or a buffer overflow: notifications may have been missed.
        #: Callers clear it once they have re-read history.
        self.possible_gap = threading.Event()
        #: Set while the LISTEN connection is up.
        self.connected = threading.Event()
        #: How many times the connection was re-established.
        self.reconnects = 0
        #: Notifications dropped because the buffer was full.
        self.dropped = 0
        self._items: deque[Notification] = deque()
        self._cond = threading.Condition()
        self._overflowed = False
        self._finished = False
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        with translate_errors():
            self._conn = self._connect()
        self.connected.set()
        self._thread = threading.Thread(target=self._run, name=f"swf-listen-{ch.name}",
                                        daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        state = "closed" if self._finished else ("connected" if self.connected.is_set()
                                                 else "reconnecting")
        return f"<Listener {self.channel!r} {state}>"

    # -- reading ------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Notification | None:
        """The next notification; None on timeout or once the listener is closed and drained."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._finished, timeout)
            return self._items.popleft() if self._items else None

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
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                if self._finished:
                    raise StopAsyncIteration
                waiter: asyncio.Future[None] = loop.create_future()
                self._async_waiters.append((loop, waiter))
            await waiter

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._finished

    # -- stopping -----------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening and close the connection (idempotent)."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            log.warning("listener thread for %r did not stop within %ss", self.channel, timeout)
        self._close_connection()
        self._finish()

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

    # -- the listening thread -----------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        # Keepalives: a silently vanished server (no FIN) is noticed within ~25 s instead
        # of never, so the reconnect logic gets its chance.
        conn = psycopg.connect(
            named_dsn(self._dsn, "listen"), autocommit=True, connect_timeout=5,
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        )
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.notify_channel)))
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                conn = self._conn
                if conn is None:
                    break
                try:
                    for notify in conn.notifies(timeout=self._poll):
                        self._deliver(self._parse(notify))
                except psycopg.Error as exc:  # admin shutdown, lost socket, protocol error
                    if self._stop.is_set():
                        break
                    log.warning("listener %r lost its connection (%s); reconnecting",
                                self.channel, str(exc).strip().splitlines()[0] if str(exc)
                                else type(exc).__name__)
                    self._reconnect()
        except Exception:  # pragma: no cover - a bug; do not die silently
            log.exception("listener %r stopped unexpectedly", self.channel)
        finally:
            self._close_connection()
            self._finish()

    def _reconnect(self) -> None:
        self.connected.clear()
        self._close_connection()
        delay = 0.05
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except psycopg.Error as exc:
                log.debug("listener %r: reconnect failed (%s); retry in %.2fs",
                          self.channel, exc, delay)
                self._stop.wait(delay * (0.5 + random.random()))
                delay = min(delay * 2, self._max_backoff)
                continue
            self._conn = conn
            self.reconnects += 1
            self.connected.set()
            self.possible_gap.set()
            log.warning("listener %r reconnected; notifications may have been missed",
                        self.channel)
            self._deliver(Notification(self.channel, "gap"))
            return

    def _parse(self, notify: psycopg.Notify) -> Notification:
        message_id = message_id_of(notify.payload)
        if message_id is not None:
            return Notification(self.channel, "message", message_id=message_id,
                                sender_pid=notify.pid)
        return Notification(self.channel, "notify", payload=notify.payload,
                            sender_pid=notify.pid)

    def _deliver(self, item: Notification) -> None:
        if self._callback is not None:
            try:
                self._callback(item)
            except Exception:
                log.exception("listener %r: callback raised on %r", self.channel, item)
            return
        with self._cond:
            if len(self._items) >= self._buffer:
                # Never block the connection's reader: drop, and tell the reader there is a gap.
                self.dropped += 1
                self._overflowed = True
                self.possible_gap.set()
                return
            if self._overflowed:
                self._overflowed = False
                self._items.append(Notification(self.channel, "gap"))
            self._items.append(item)
            self._cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        _wake(waiters)

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is gone
                pass

    def _finish(self) -> None:
        with self._cond:
            self._finished = True
            self.connected.clear()
            self._cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        _wake(waiters)


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, fut in waiters:
        try:
            loop.call_soon_threadsafe(_resolve, fut)
        except RuntimeError:  # the loop was closed: nobody waits any more
            pass


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def listen(
    channel: str, repo: DatabaseHandle | None = None, *,
    callback: Callable[[Notification], Any] | None = None, buffer: int = 100_000,
    max_backoff: float = 5.0,
) -> Listener:
    """Start listening on ``channel``; returns once the LISTEN is in place.

    Without ``callback`` read the :class:`Listener` by iterating it (threads) or with
    ``async for`` (asyncio; see also :func:`alisten`). With ``callback``, it is called in
    the listener's thread for each :class:`Notification`. ``buffer`` bounds undelivered
    notifications (overflow drops and reports a gap); ``max_backoff`` caps the delay
    between reconnect attempts. ``listen("swf:workflow_events", repo)`` delivers the workflow
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
