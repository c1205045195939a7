"""Wake-ups: one LISTEN connection per transport, plus a self-pipe for local events.

A consumer with nothing to do sleeps in :meth:`Wakeup.wait` until a producer's NOTIFY for
one of its queues arrives, an ack in another thread frees prefetch capacity (:meth:`poke`),
or the timeout passes (the polling fallback, or the moment a delayed message becomes due).

The LISTEN connection is the library's one LISTEN plumbing
(:class:`swf_celery.db.listening.ListenConnection`): its own thread reads the socket into a
buffer, whatever the consumer is doing, so a busy or blocked worker never holds
PostgreSQL's notification queue. It reconnects by itself; when NOTIFYs may have been missed
(a reconnect, a full buffer, NOTIFYs the database skipped because its queue was too full)
:meth:`Wakeup.take_missed` says so and every queue is read again.

Inside an event loop (Celery's worker hub) nobody calls :meth:`wait`: the transport registers
:attr:`Wakeup.pipe_fd` and :attr:`Wakeup.notify_fd` as readers and calls :meth:`consume`
when one of them is readable. There the consumer sleeps on its queues under its own channel
(:attr:`Wakeup.channel`, ``swf.queue_sleep``): a message wakes one consumer, not every
listener of the queue, and the NOTIFY on the own channel names the queue's channel
(:meth:`Wakeup.take_woken`) or carries the message itself, claimed for this consumer
(:meth:`Wakeup.take_handed`, :mod:`.handover`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import threading

from swf_celery.db import load_queries
from swf_celery.db.listening import ListenConnection
from swf_celery.errors import ArgumentError
from swf_celery.transport import handover
from swf_celery.transport.names import is_listen_channel

QUERIES = load_queries("swf_celery.transport")
#: NOTIFYs the listener keeps for the consumer; beyond, they are dropped and every queue
#: is read again (a gap).
BUFFER = 10_000


class Wakeup:
    """LISTENs on queue channels of one database; waits for NOTIFY or a local poke."""

    def __init__(self, dsn: str, *, listening: bool = True) -> None:
        # Connected before it returns (DatabaseUnavailable, a connection error for kombu,
        # when the server is away); without ``listening`` (transport option wakeups=False)
        # there is no LISTEN connection at all, only the self-pipe.
        # Its session holds the lock that tells producers it lives (swf._sleeper_alive).
        self._listener = (ListenConnection(dsn, name="swf-wakeup", buffer=BUFFER,
                                           on_connect=QUERIES["hold_sleeper"])
                          if listening else None)
        self._channels: set[str] = set()
        self._lock = threading.Lock()
        #: This consumer's own channel: a message wakes it there alone (``swf.queue_sleep``).
        self.channel = f"swfw_{secrets.token_hex(8)}"
        #: This consumer's secret: the database signs the messages handed over to it with it.
        self.key = handover.new_key()
        #: Queue channels named by NOTIFYs on :attr:`channel` since :meth:`take_woken`.
        self.woken: set[str] = set()
        #: Messages handed over on :attr:`channel` since :meth:`take_handed`.
        self.handed: list[handover.Handed] = []
        #: NOTIFYs received so far (the benchmark reports how far wake-ups were coalesced).
        self.notifications = 0
        #: Channels NOTIFYed since the event loop last took them (:meth:`take_notified`).
        self.notified: set[str] = set()
        self._missed = False
        self._notify_fd = self._listener.fileno() if self._listener is not None else None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        if self._listener is not None:
            self.listen(self.channel)

    def sleeper(self) -> tuple[str, int] | None:
        """(own channel, backend pid of the LISTEN session) to sleep on queues with
        (``swf.queue_sleep``); None while the LISTEN connection is down or absent."""
        if self._listener is None or not self._listener.connected.is_set():
            return None
        pid = self._listener.backend_pid
        return None if pid is None else (self.channel, pid)

    def listen(self, channel: str) -> None:
        """Start listening on ``channel`` (a validated name, see ``names.listen_channel``);
        returns once the LISTEN is in place, or at once while the connection is down (its
        return is then reported as missed NOTIFYs)."""
        if self._listener is None:
            raise ArgumentError("this transport does not listen (transport option wakeups)")
        with self._lock:
            if channel in self._channels:
                return
            self._channels.add(channel)
        self._listener.listen([channel])

    def listening(self) -> bool:
        """True while the LISTEN connection is up: NOTIFYs (or a report of missed ones)
        reach :meth:`take_notified` / :meth:`take_missed`."""
        return self._listener is not None and self._listener.connected.is_set()

    def poke(self) -> None:
        """Wake a :meth:`wait` in another thread (or the next one); never blocks."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    @property
    def pipe_fd(self) -> int:
        """The self-pipe's read end (readable after :meth:`poke`)."""
        return self._wake_r

    @property
    def notify_fd(self) -> int | None:
        """Readable while NOTIFYs (or a report of missed ones) wait to be consumed; None
        without a LISTEN connection."""
        return self._notify_fd

    def consume(self, fd: int | None = None) -> bool:
        """Take what is readable on ``fd`` (both when None) without blocking; True when a
        NOTIFY, a report of missed ones or a poke was there."""
        woken = False
        if fd is None or fd == self._wake_r:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self._wake_r, 4096):
                    woken = True
        if self._notify_fd is not None and (fd is None or fd == self._notify_fd):
            woken = self._take(record=True) or woken
        return woken

    def _take(self, *, record: bool) -> bool:
        if self._listener is None:
            return False
        items = self._listener.take()
        for item in items:
            if item.gap is not None:
                self._missed = True
                continue
            self.notifications += 1
            if not record:
                continue
            if item.channel != self.channel:
                self.notified.add(item.channel)
            elif is_listen_channel(item.payload):
                self.woken.add(item.payload)
            elif (handed := handover.parse(item.payload, self.key)) is not None:
                self.handed.append(handed)
            else:  # neither a queue's channel nor a message signed for us: read every queue
                self._missed = True
        return bool(items)

    def take_notified(self) -> set[str]:
        """The queue channels NOTIFYed since the last call (read by :meth:`consume`)."""
        notified, self.notified = self.notified, set()
        return notified

    def take_woken(self) -> set[str]:
        """The queue channels this consumer was woken for on its own channel since the last
        call (it stays asleep on them, at the back of the line)."""
        woken, self.woken = self.woken, set()
        return woken

    def take_handed(self) -> list[handover.Handed]:
        """The messages handed over to this consumer since the last call, in order."""
        handed, self.handed = self.handed, []
        return handed

    def take_missed(self) -> bool:
        """True once after NOTIFYs may have been missed: read every queue again."""
        missed, self._missed = self._missed, False
        return missed

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when woken by a NOTIFY or a poke."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._notify_fd is not None:
            poller.register(self._notify_fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(int(max(0.0, timeout) * 1000))}
        woken = False
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
            woken = True
        if self._notify_fd is not None and self._notify_fd in ready:
            woken = self._take(record=False) or woken
        return woken

    def close(self) -> None:
        """Close the LISTEN connection and the pipe."""
        with self._lock:
            self._channels.clear()
        if self._listener is not None:
            self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
