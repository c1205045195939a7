"""The consume loop inside an event loop (Celery's worker hub), as kombu's Redis transport has.

Celery gives a worker its asynchronous prefork pool only when the broker transport runs in the
worker's hub (``implements.asynchronous``). :class:`HubConsumer` does the transport's part:

- the self-pipe of :class:`~swf_celery.transport.wakeup.Wakeup` (poked by acks, ``basic_qos``
  and new consumers) and the LISTEN socket (NOTIFY from producers) are hub readers;
- a NOTIFY runs :meth:`HubConsumer.drain` at once: write the batched acks, deliver one
  batch, and when nothing is left arm the consumed queues (``swf.queue_arm``) and return;
- what may wait a moment runs :data:`FOLLOW_UP` seconds later, after the hub's next poll:
  the read after a delivered batch, and the drain a poke asks for (acks, ``basic_qos``, a
  new consumer). So the hub hands a delivered task to a pool process (a write it does
  when it polls) before the transport spends round trips on the next read, and the acks
  of tasks accepted together are written in one statement;
- a hub timer stands in for the sleep of the synchronous loop: the polling fallback, or the
  moment the next delayed or hidden message becomes due.

Nothing here blocks on the network beyond one short statement, so a SIGTERM, a control
command or a finished task is handled by the hub at once.
"""

from __future__ import annotations

import contextlib
from queue import Empty
from time import monotonic
from typing import TYPE_CHECKING, Any

from swf_celery.db import load_queries

if TYPE_CHECKING:
    from swf_celery.transport.transport import Transport

QUERIES = load_queries("swf_celery.transport")
#: Seconds a deferred drain waits: long enough for one hub poll, short against a round trip.
FOLLOW_UP = 0.001


class HubConsumer:
    """Drives one transport's consumers from a kombu hub (``loop``)."""

    def __init__(self, transport: Transport, loop: Any) -> None:
        self.transport = transport
        self.loop = loop
        self._fds: set[int] = set()
        self._timer: Any = None
        self._timer_due = 0.0
        self._closed = False
        wakeup = transport.wakeup()
        self._add_reader(wakeup.pipe_fd)
        loop.on_tick.add(self.on_tick)
        self.soon()

    # -- hub callbacks ----------------------------------------------------------------------

    def on_tick(self) -> None:
        """Before each poll: make sure the current LISTEN socket is a reader (it appears on
        the first LISTEN and changes when the connection is re-established)."""
        wakeup = self.transport._wakeup
        fd = wakeup.socket_fd() if wakeup is not None else None
        if fd is not None and fd not in self._fds:
            for old in list(self._fds):
                if wakeup is not None and old != wakeup.pipe_fd:
                    self._remove_reader(old)
            self._add_reader(fd)

    def on_readable(self, fd: int) -> None:
        """A NOTIFY (drain now) or a poke (drain after the next poll) arrived."""
        wakeup = self.transport._wakeup
        if wakeup is None:
            return
        wakeup.consume(fd)
        if fd == wakeup.pipe_fd:
            self.soon()
        else:
            self.drain()

    def soon(self) -> None:
        """Run :meth:`drain` in :data:`FOLLOW_UP` seconds, unless it is due sooner."""
        if self._closed:
            return
        due = monotonic() + FOLLOW_UP
        if self._timer is not None and self._timer_due <= due:
            return
        self._cancel_timer()
        self._timer = self.loop.call_later(FOLLOW_UP, self.drain)
        self._timer_due = due

    # -- the consume step -------------------------------------------------------------------

    def drain(self) -> None:
        """Deliver one batch, or arm the consumed queues and set the fallback timer."""
        if self._closed:
            return
        transport = self.transport
        self._cancel_timer()
        transport.flush_acks()
        try:
            transport.cycle.get(transport._deliver, timeout=0)
        except Empty:
            pass
        else:
            self.soon()  # there may be more: read again once the hub has polled
            return
        transport.flush_acks()
        queues = sorted({q for ch in list(transport.channels) for q in ch.consumed_queues()})
        due: float | None = None
        if queues and transport.options.wakeups:
            row = transport.pg_connection().execute(QUERIES["arm"],
                                                    {"queues": queues}).fetchone()
            due = row[0] if row else None
            if due is not None and due <= 0:
                self.soon()  # a message became visible meanwhile
                return
        if not any(ch._consumers for ch in list(transport.channels)):
            return  # nothing consumes: a new consumer pokes the pipe
        wait = transport.polling_interval or 1.0
        if due is not None:
            wait = min(wait, due + 0.002)
        self._timer = self.loop.call_later(wait, self.drain)
        self._timer_due = monotonic() + wait

    # -- bookkeeping ------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the hub: readers, tick callback and timer removed."""
        self._closed = True
        self._cancel_timer()
        self.loop.on_tick.discard(self.on_tick)
        for fd in list(self._fds):
            self._remove_reader(fd)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            with contextlib.suppress(Exception):
                timer.cancel()

    def _add_reader(self, fd: int) -> None:
        self.loop.add_reader(fd, self.on_readable, fd)
        self._fds.add(fd)

    def _remove_reader(self, fd: int) -> None:
        self._fds.discard(fd)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(fd)
