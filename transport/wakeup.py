"""Wake-ups: one LISTEN connection per transport, plus a self-pipe for local events.

A consumer with nothing to do sleeps in :meth:`Wakeup.wait` until a producer's NOTIFY for
one of its queues arrives, an ack in another thread frees prefetch capacity (:meth:`poke`),
or the timeout passes (the polling fallback, or the moment a delayed message becomes due).
Connection loss surfaces as ``psycopg.OperationalError`` so kombu reconnects the transport.

Inside an event loop (Celery's worker hub) nobody calls :meth:`wait`: the transport registers
:attr:`Wakeup.pipe_fd` and :meth:`Wakeup.socket_fd` as readers and calls :meth:`consume`
when one of them is readable.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from typing import Any

import psycopg
from psycopg import sql

from swf_celery.db import open_connection


class Wakeup:
    """LISTENs on queue channels of one database; waits for NOTIFY or a local poke."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None
        self._channels: set[str] = set()
        self._lock = threading.Lock()
        #: NOTIFYs received so far (the benchmark reports how far wake-ups were coalesced).
        self.notifications = 0
        #: Channels NOTIFYed since the event loop last took them (:meth:`take_notified`).
        self.notified: set[str] = set()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def listen(self, channel: str) -> None:
        """Start listening on ``channel`` (a validated name, see ``names.listen_channel``)."""
        with self._lock:
            if channel in self._channels:
                return
            conn = self._connection()
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self._channels.add(channel)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = open_connection(self._dsn, "listen")
            for channel in self._channels:
                self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        return self._conn

    def poke(self) -> None:
        """Wake a :meth:`wait` in another thread (or the next one); never blocks."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    @property
    def pipe_fd(self) -> int:
        """The self-pipe's read end (readable after :meth:`poke`)."""
        return self._wake_r

    def socket_fd(self) -> int | None:
        """The LISTEN connection's socket, or None while nothing is listened to."""
        conn = self._conn if self._channels else None
        if conn is None or conn.closed:
            return None
        return int(conn.pgconn.socket)

    def consume(self, fd: int | None = None) -> bool:
        """Take what is readable on ``fd`` (both when None) without blocking; True when a
        NOTIFY or a poke was there. A lost LISTEN connection raises OperationalError."""
        woken = False
        if fd is None or fd == self._wake_r:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self._wake_r, 4096):
                    woken = True
        conn = self._conn if self._channels else None
        if conn is not None and (fd is None or fd == conn.pgconn.socket):
            pgconn = conn.pgconn
            pgconn.consume_input()  # raises OperationalError when the server went away
            while (notify := pgconn.notifies()) is not None:
                self.notifications += 1
                self.notified.add(notify.relname.decode("utf-8", "replace"))
                woken = True
        return woken

    def take_notified(self) -> set[str]:
        """The channels NOTIFYed since the last call (read by :meth:`consume`)."""
        notified, self.notified = self.notified, set()
        return notified

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when woken by a NOTIFY or a poke."""
        fds = [self._wake_r]
        conn = self._conn if self._channels else None
        if conn is not None:
            fds.append(conn.pgconn.socket)
        ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        woken = False
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
            woken = True
        if conn is not None and (conn.pgconn.socket in ready):
            pgconn = conn.pgconn
            pgconn.consume_input()  # raises OperationalError when the server went away
            while pgconn.notifies() is not None:
                self.notifications += 1
                woken = True
        return woken

    def close(self) -> None:
        """Close the LISTEN connection and the pipe."""
        with self._lock:
            conn, self._conn = self._conn, None
            self._channels.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
