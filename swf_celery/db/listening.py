"""LISTEN, one way: a dedicated connection whose reading thread does nothing but read.

Every listener of the library is a :class:`ListenConnection`: messaging's
:class:`~swf_celery.messaging.listen.Listener`, the console's event hub, the result waiter,
the broker's wake-ups and a blocking ``Executor.execute``. It owns

- **a reading thread that only reads.** It waits on the socket, takes the NOTIFYs and appends
  them to a bounded buffer; it never runs a caller's code. PostgreSQL trims its one
  notification queue (the server's, shared by every database) only up to the slowest
  listener, and one that stops reading holds it until every COMMIT that NOTIFYs fails; a
  slow, blocked or vanished reader of this buffer costs only its own notifications. When the
  buffer is full, new notifications are dropped and counted (:attr:`dropped`), a warning is
  logged, and a gap is reported before the next one delivered.
- **the readers' side**: :meth:`get` and :meth:`take` in threads, :meth:`aget` in asyncio
  code, :meth:`fileno` (readable while notifications wait) for ``select`` and event loops, or
  a ``callback`` that a dispatch thread of its own calls for each notification.
- **the LISTEN set**: :meth:`listen` and :meth:`unlisten` return once the server has the
  change; the reading thread runs it between reads, pipelined with an optional query (the
  rows a NOTIFY announces, read in the same round trip). :meth:`execute` runs a statement on
  the connection. The caller's statements must be short: reading waits meanwhile.
- **reconnects**, with exponential back-off (50 ms doubling to ``max_backoff``, jittered):
  every channel is LISTENed again and a **gap** is reported, since PostgreSQL does not keep
  NOTIFYs for absent listeners. Readers re-read what they show.
- **skipped NOTIFYs**: every :data:`SKIP_CHECK` seconds the reading thread reads how many
  NOTIFYs the database skipped because its queue was too full (:mod:`.notifications`) and
  reports a gap when the count moved.

A gap is a :class:`Received` whose ``gap`` says why: :data:`GAP_RECONNECT`,
:data:`GAP_OVERFLOW` or :data:`GAP_SKIPPED`. The connection is role ``listen``
(``swf-listen@host``, to the URL's ``listen_url`` when it has one), with TCP keepalives
unless the URL sets its own: a server gone silently counts as a drop within ~25 s. A forked
child never closes its parent's listeners (that would end the parent's sessions): there
they read as closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict

from swf_celery.db.connections import named_dsn, open_connection
from swf_celery.db.errors import first_line, translate_errors
from swf_celery.db.notifications import skipped_count
from swf_celery.errors import ArgumentError

log = logging.getLogger(__name__)

#: Seconds between two reads of the database's count of skipped NOTIFYs.
SKIP_CHECK = 1.0
#: Why a gap was reported: the connection was re-established (or came up after a
#: :meth:`ListenConnection.listen` that could not wait for it) ...
GAP_RECONNECT = "reconnect"
#: ... the buffer was full and notifications were dropped ...
GAP_OVERFLOW = "overflow"
#: ... or the database skipped NOTIFYs because its notification queue was too full.
GAP_SKIPPED = "skipped"
#: Least seconds between two warnings of a full buffer, per listener.
WARN_EVERY = 60.0
_FIRST_BACKOFF = 0.05
#: libpq parameters of a LISTEN connection, where its URL sets none of its own: keepalives
#: make a server gone silently (no FIN) a drop within ~25 s.
_DEFAULTS: dict[str, Any] = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10,
                             "keepalives_interval": 5, "keepalives_count": 3}

Rows = list[tuple[Any, ...]]


@dataclass(frozen=True)
class Received:
    """One notification as the reading thread took it, or a gap marker (``gap`` set)."""

    channel: str = ""
    payload: str = ""
    #: Backend pid of the sending session (0 for a gap).
    sender_pid: int = 0
    #: Set on a gap marker: why notifications may have been missed before this point.
    gap: str | None = None
    received_at: float = field(default_factory=time.time)


class _Request:
    """A change of the LISTEN set and/or a statement, run by the reading thread."""

    def __init__(self, query: Any, params: Mapping[str, Any] | None) -> None:
        self.query = query
        self.params = params
        self.rows: Rows | None = None
        self.error: psycopg.Error | None = None
        self.done = threading.Event()

    def finish(self, rows: Rows | None, error: psycopg.Error | None = None) -> None:
        self.rows, self.error = rows, error
        self.done.set()


class ListenConnection:
    """A dedicated LISTEN connection and its reading thread (see the module docstring).

    ``channels`` are PostgreSQL channel names (quoted as identifiers). With ``connect`` the
    constructor connects and LISTENs before it returns (raising
    :class:`~swf_celery.errors.DatabaseUnavailable` when the server cannot be reached);
    without, the reading thread connects in the background (:attr:`connected` tells when).
    ``buffer`` bounds the notifications not yet read; ``callback``, when given, is called
    with each one (gaps included) by a dispatch thread, never by the reading thread.
    ``on_connect``, when given, is a statement each new connection runs before its first
    LISTEN (a failure is logged and the connection used all the same).
    """

    def __init__(
        self, dsn: str, channels: Iterable[str] = (), *, name: str = "swf-listen",
        buffer: int = 10_000, max_backoff: float = 5.0,
        callback: Callable[[Received], Any] | None = None, connect: bool = True,
        skip_check: float | None = SKIP_CHECK, on_connect: str | None = None,
    ) -> None:
        self.name = name
        self._on_connect = on_connect
        self._dsn = dsn
        given = conninfo_to_dict(named_dsn(dsn, "listen"))
        self._defaults = {k: v for k, v in _DEFAULTS.items() if k not in given}
        self._limit = max(1, int(buffer))
        self._max_backoff = max_backoff
        self._skip_check = skip_check
        self._callback = callback
        self._pid = os.getpid()
        #: Set while the connection is up with every channel of the set LISTENed.
        self.connected = threading.Event()
        #: Set when a gap was reported (a reconnect, an overflow, skipped NOTIFYs); readers
        #: clear it once they have re-read.
        self.possible_gap = threading.Event()
        #: Times the connection was re-established.
        self.reconnects = 0
        #: Notifications dropped because the buffer was full.
        self.dropped = 0
        #: Notifications received (gaps not counted).
        self.received = 0
        # The set callers want; what the current connection LISTENs (reading thread only).
        self._lock = threading.Lock()
        self._wanted: set[str] = set(channels)
        self._listening: set[str] = set()
        self._changed = False  # the set changed since the reading thread last applied it
        self._requests: list[_Request] = []
        self._missed = False  # a listen() returned before its LISTEN was in place
        self._was_connected = False
        self._conn: psycopg.Connection[Any] | None = None
        self._skips: int | None = None
        # The buffer and its readers.
        self._cond = threading.Condition()
        self._items: deque[Received] = deque()
        self._overflowed = False
        self._finished = False
        self._warned = float("-inf")
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._ready: tuple[int, int] | None = None  # pipe readable while items wait
        self._ready_set = False
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        if connect:
            try:
                with translate_errors():
                    self._connect()
            except BaseException:
                self._close_pipes()
                raise
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._dispatcher: threading.Thread | None = None
        if callback is not None:
            self._dispatcher = threading.Thread(target=self._dispatch, name=f"{name}-dispatch",
                                                daemon=True)
        self._thread.start()
        if self._dispatcher is not None:
            self._dispatcher.start()

    def __repr__(self) -> str:
        state = ("closed" if self.closed else
                 "connected" if self.connected.is_set() else "reconnecting")
        return f"<ListenConnection {self.name!r} {state}>"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (and in a forked child)."""
        return self._finished or self._forked()

    @property
    def channels(self) -> frozenset[str]:
        """The channels of the LISTEN set."""
        with self._lock:
            return frozenset(self._wanted)

    @property
    def backend_pid(self) -> int | None:
        """The server process of the current connection (None while reconnecting)."""
        conn = self._conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    @property
    def thread(self) -> threading.Thread:
        """The reading thread."""
        return self._thread

    # -- the LISTEN set and statements ---------------------------------------------------

    def listen(self, channels: Iterable[str], *, unlisten: Iterable[str] = (),
               query: Any = None, params: Mapping[str, Any] | None = None) -> Rows | None:
        """Add ``channels`` to the LISTEN set (and remove ``unlisten``); return once the
        server has the change, with the rows of ``query`` run after it in the same round
        trip (``[]`` without one).

        While the connection is down it returns None at once: the reconnect LISTENs the
        whole set and reports a gap, so a caller re-reads then. A failing ``query`` raises
        its :class:`~swf_celery.errors.SwfError`.
        """
        return self._request(set(channels), set(unlisten), query, params)

    def unlisten(self, channels: Iterable[str]) -> None:
        """Remove ``channels`` from the LISTEN set (see :meth:`listen`)."""
        self._request(set(), set(channels), None, None)

    def execute(self, query: Any, params: Mapping[str, Any] | None = None) -> Rows | None:
        """Run ``query`` on the connection and return its rows; None while it is down."""
        return self._request(set(), set(), query, params)

    def _request(self, add: set[str], drop: set[str], query: Any,
                 params: Mapping[str, Any] | None) -> Rows | None:
        if self.closed:
            raise ArgumentError(f"{self.name}: the listener is closed")
        if threading.current_thread() is self._thread:  # pragma: no cover - a bug
            raise RuntimeError("the reading thread never waits for itself")
        req = _Request(query, params)
        with self._lock:
            self._wanted |= add
            self._wanted -= drop
            self._changed = self._changed or bool(add or drop)
            if not self.connected.is_set():
                self._missed = self._missed or bool(add)
                return None
            self._requests.append(req)
        self._poke()
        req.done.wait()
        if req.error is not None:
            with translate_errors():
                raise req.error
        return req.rows

    # -- reading ---------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Received | None:
        """The next notification; None on timeout, or once closed and drained."""
        if self._forked():
            return None
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._finished, timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            if not self._items:
                self._clear_ready()
            return item

    def take(self, timeout: float = 0.0) -> list[Received]:
        """Every notification waiting, after up to ``timeout`` seconds for the first."""
        if self._forked():
            return []
        with self._cond:
            if timeout > 0:
                self._cond.wait_for(lambda: self._items or self._finished, timeout)
            items = list(self._items)
            self._items.clear()
            self._clear_ready()
            return items

    async def aget(self) -> Received | None:
        """:meth:`get` for asyncio: waits without blocking the loop; None once closed."""
        loop = asyncio.get_running_loop()
        while True:
            if self._forked():
                return None
            with self._cond:
                if self._items:
                    item = self._items.popleft()
                    if not self._items:
                        self._clear_ready()
                    return item
                if self._finished:
                    return None
                waiter: asyncio.Future[None] = loop.create_future()
                self._async_waiters.append((loop, waiter))
            await waiter

    def fileno(self) -> int:
        """A descriptor readable while notifications wait (for ``select`` and event loops);
        :meth:`take` or :meth:`get` them, which makes it unreadable again once drained."""
        with self._cond:
            if self._ready is None:
                r, w = os.pipe()
                os.set_blocking(r, False)
                os.set_blocking(w, False)
                self._ready = (r, w)
                if self._items or self._finished:
                    self._set_ready()
            return self._ready[0]

    # -- stopping --------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading and close the connection (idempotent); readers see the end."""
        if self._forked():
            return  # the parent's: never closed here
        self._stop.set()
        self._poke()
        current = threading.current_thread()
        if current is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s: the reading thread did not stop within %ss", self.name,
                            timeout)
        self._disconnect()
        self._finish()
        dispatcher = self._dispatcher
        if dispatcher is not None and current is not dispatcher and dispatcher.is_alive():
            dispatcher.join(timeout)
        if not self._thread.is_alive():
            self._close_pipes()

    def __enter__(self) -> ListenConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forked(self) -> bool:
        return os.getpid() != self._pid

    # -- the reading thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._conn is None and not self._reconnect():
                    break
                try:
                    self._serve()
                except psycopg.Error as exc:  # admin shutdown, lost socket, protocol error
                    if self._stop.is_set():
                        break
                    log.warning("%s lost its connection (%s); reconnecting", self.name,
                                first_line(exc))
                    self._disconnect()
        except Exception:  # pragma: no cover - a bug; do not die silently
            log.exception("%s stopped unexpectedly", self.name)
        finally:
            self._disconnect()
            self._finish()

    def _serve(self) -> None:
        """Read until the connection fails or :meth:`close` is called."""
        conn = self._conn
        if conn is None:
            return
        pgconn = conn.pgconn
        poller = select.poll()  # poll, not select: descriptors above 1023 are fine
        poller.register(pgconn.socket, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        check = self._skip_check
        next_check = time.monotonic() + check if check else None
        while not self._stop.is_set():
            wait = None if next_check is None else max(0.0, next_check - time.monotonic())
            for fd, _ in poller.poll(None if wait is None else int(wait * 1000) + 1):
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError, OSError):
                        while os.read(self._wake_r, 4096):
                            pass
                    continue
                pgconn.consume_input()  # raises OperationalError once the server has gone
                self._take_notifies(pgconn)
                if pgconn.status != pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the server closed the connection")
            if self._stop.is_set():
                return
            self._serve_requests(conn)
            if next_check is not None and time.monotonic() >= next_check:
                self._check_skips(conn)
                next_check = time.monotonic() + (check or 0)

    def _take_notifies(self, pgconn: pq.abc.PGconn) -> None:
        handler = pgconn.notify_handler  # psycopg's: it calls _on_notify
        while (notify := pgconn.notifies()) is not None:
            if handler is not None:
                handler(notify)

    def _on_notify(self, notify: psycopg.Notify) -> None:
        # psycopg calls this for every NOTIFY it reads, during statements too.
        self.received += 1
        self._push(Received(notify.channel, notify.payload, notify.pid))

    def _serve_requests(self, conn: psycopg.Connection[Any]) -> None:
        """Bring the LISTEN set up to date and run the statements asked for."""
        while True:
            with self._lock:
                if not self._requests and not self._changed:
                    return  # the common case, after each read: nothing asked for
                add = self._wanted - self._listening
                drop = self._listening - self._wanted
                req = self._requests.pop(0) if self._requests else None
                self._changed = False
            try:
                rows = self._apply(conn, add, drop, req)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                if req is not None:
                    req.finish(None)  # the reconnect LISTENs the set and reports a gap
                raise
            except psycopg.Error as exc:
                if req is None:
                    raise
                with self._lock:
                    self._changed = True  # the LISTENs of a failed pipeline: again
                req.finish(None, exc)
                continue
            if req is not None:
                req.finish(rows)

    def _apply(self, conn: psycopg.Connection[Any], add: set[str], drop: set[str],
               req: _Request | None) -> Rows:
        """UNLISTEN ``drop``, LISTEN ``add`` and run ``req``'s statement, in one round trip."""
        cur = None
        statements = [pgsql.SQL("UNLISTEN {}").format(pgsql.Identifier(c)) for c in drop]
        statements += [pgsql.SQL("LISTEN {}").format(pgsql.Identifier(c)) for c in add]
        query = req.query if req is not None else None
        if len(statements) + (query is not None) > 1:
            with conn.pipeline():
                for statement in statements:
                    conn.execute(statement)
                if query is not None:
                    cur = conn.execute(query, req.params if req is not None else None)
        elif statements:
            conn.execute(statements[0])
        elif query is not None:
            cur = conn.execute(query, req.params if req is not None else None)
        self._listening = (self._listening - drop) | add
        # A NOTIFY parsed while the results were read waits in libpq's queue.
        self._take_notifies(conn.pgconn)
        return cur.fetchall() if cur is not None and cur.description is not None else []

    def _check_skips(self, conn: psycopg.Connection[Any]) -> None:
        if self._skips is None:
            return
        count = skipped_count(conn)
        if count is None:
            self._skips = None
            return
        if count != self._skips:
            log.info("%s: the database skipped %d NOTIFYs (its notification queue is too "
                     "full); reporting a gap", self.name, count - self._skips)
            self._skips = count
            self._push(Received(gap=GAP_SKIPPED))

    def _connect(self) -> None:
        """Open the connection and LISTEN the whole set; :attr:`connected` once done."""
        conn = open_connection(self._dsn, "listen", **self._defaults)
        try:
            conn.add_notify_handler(self._on_notify)
            if self._on_connect is not None:
                try:
                    conn.execute(self._on_connect)  # type: ignore[arg-type]  # a query of a .sql file
                except psycopg.DatabaseError as exc:  # an older schema: used all the same
                    log.debug("%s: the connect statement failed (%s)", self.name,
                              first_line(exc))
            self._skips = skipped_count(conn) if self._skip_check else None
            self._listening = set()
            while True:
                with self._lock:
                    add = self._wanted - self._listening
                    drop = self._listening - self._wanted
                    if not add and not drop:
                        self._changed = False
                        self._conn = conn
                        self._was_connected = True
                        self.connected.set()
                        return
                self._apply(conn, add, drop, None)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise

    def _reconnect(self) -> bool:
        """Connect with back-off until it works (True) or :meth:`close` is called."""
        delay = _FIRST_BACKOFF
        again = self._was_connected
        while not self._stop.is_set():
            try:
                self._connect()
            except psycopg.Error as exc:
                log.debug("%s: connecting failed (%s); retry in about %.2fs", self.name,
                          first_line(exc), delay)
                self._stop.wait(delay * (0.5 + random.random()))
                delay = min(delay * 2, self._max_backoff)
                continue
            with self._lock:
                missed, self._missed = self._missed, False
            if again:
                self.reconnects += 1
                log.warning("%s reconnected; notifications may have been missed", self.name)
            if again or missed:
                self._push(Received(gap=GAP_RECONNECT))
            return True
        return False

    def _disconnect(self) -> None:
        with self._lock:
            self.connected.clear()
            requests, self._requests = self._requests, []
            conn, self._conn = self._conn, None
        for req in requests:
            req.finish(None)
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                conn.close()

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    # -- the buffer ------------------------------------------------------------------------

    def _push(self, item: Received) -> None:
        warn = False
        with self._cond:
            if self._finished:
                return
            if len(self._items) >= self._limit:
                if item.gap is None:
                    self.dropped += 1
                self._overflowed = True
                self.possible_gap.set()
                now = time.monotonic()
                if now - self._warned >= WARN_EVERY:
                    self._warned, warn = now, True
                waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
            else:
                if self._overflowed:
                    self._overflowed = False
                    self._items.append(Received(gap=GAP_OVERFLOW))
                self._items.append(item)
                if item.gap is not None:
                    self.possible_gap.set()
                self._cond.notify_all()
                self._set_ready()
                waiters, self._async_waiters = self._async_waiters, []
        _wake(waiters)
        if warn:
            log.warning("%s: %d notifications waiting, more are dropped (%d so far) and a gap "
                        "is reported: its reader is slower than its notifications", self.name,
                        self._limit, self.dropped)

    def _set_ready(self) -> None:
        if self._ready is not None and not self._ready_set:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._ready[1], b"!")
            self._ready_set = True

    def _clear_ready(self) -> None:
        if self._ready is not None and self._ready_set and not self._finished:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self._ready[0], 4096):
                    pass
            self._ready_set = False

    def _finish(self) -> None:
        with self._cond:
            self._finished = True
            self._cond.notify_all()
            self._set_ready()
            waiters, self._async_waiters = self._async_waiters, []
        _wake(waiters)

    def _close_pipes(self) -> None:
        fds = [self._wake_r, self._wake_w]
        with self._cond:
            if self._ready is not None:
                fds += list(self._ready)
                self._ready = None
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- the dispatch thread ---------------------------------------------------------------

    def _dispatch(self) -> None:
        callback = self._callback
        assert callback is not None
        while True:
            item = self.get()
            if item is None or self._stop.is_set():
                return
            try:
                callback(item)
            except Exception:
                log.exception("%s: callback raised on %r", self.name, item)


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, fut in waiters:
        with contextlib.suppress(RuntimeError):  # the loop was closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
