"""Live updates: one LISTEN on the engine's workflow events, fanned out to browsers.

The console opens ONE listener per process (not one per browser tab), the library's LISTEN
plumbing (:class:`swf_celery.db.listening.ListenConnection`) on
:data:`swf_celery.workflows.coordinator.EVENTS_NOTIFY_CHANNEL`, and hands each event
``{"run_id", "step", "status"}`` to every subscribed Server-Sent-Events stream. It starts
with the first subscriber. Its reading thread only reads, so a stalled console never holds
PostgreSQL's notification queue. When notifications may have been missed (a reconnect, a
full buffer, NOTIFYs the database skipped) subscribers get a ``{"gap": true}`` marker and
pages re-read the state they show.

Events are hints: any session that can connect may NOTIFY the channel. Only payloads of the
event's form are passed on (:func:`~swf_celery.workflows.coordinator.parse_event`), and pages
re-read the run from the database after each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from swf_celery.db.listening import ListenConnection
from swf_celery.workflows.coordinator import EVENTS_NOTIFY_CHANNEL, parse_event

#: Events a slow browser may fall behind by before it is told to re-read (a gap).
SUBSCRIBER_BUFFER = 1000
GAP: dict[str, Any] = {"gap": True}
#: Most seconds a new subscriber waits for the LISTEN to be in place.
START_TIMEOUT = 30.0


class EventHub:
    """Fan-out of workflow events to asyncio subscribers (one per SSE stream)."""

    def __init__(self, dsn: str, *, max_backoff: float = 5.0) -> None:
        self._dsn = dsn
        self._max_backoff = max_backoff
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._listener: ListenConnection | None = None
        self._task: asyncio.Task[None] | None = None
        #: Events received since start (shown by /metrics).
        self.received = 0

    @property
    def reconnects(self) -> int:
        """Times the LISTEN connection was re-established."""
        return self._listener.reconnects if self._listener is not None else 0

    async def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            listener = self._listener
            if listener is None or listener.closed:
                # Connects in its own thread, retrying with back-off while the server is away.
                listener = self._listener = ListenConnection(
                    self._dsn, [EVENTS_NOTIFY_CHANNEL], name="swf-ui-events",
                    max_backoff=self._max_backoff, connect=False)
            self._task = asyncio.create_task(self._run(listener), name="swf-ui-events")
        # LISTEN is in place before the caller reads state: no event falls in between.
        listener = self._listener
        assert listener is not None
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, listener.connected.wait, START_TIMEOUT):
            raise asyncio.TimeoutError(f"cannot LISTEN on {EVENTS_NOTIFY_CHANNEL}")

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue receiving every event from now on (and :data:`GAP` markers)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_BUFFER)
        self._subscribers.add(queue)
        try:
            await self._ensure_started()
            yield queue
        finally:
            self._subscribers.discard(queue)

    def _publish(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a stalled tab: drop its backlog, tell it to re-read
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(GAP)

    async def _run(self, listener: ListenConnection) -> None:
        while (item := await listener.aget()) is not None:
            if item.gap is not None:
                self._publish(GAP)
                continue
            event = parse_event(item.payload)
            if event is not None:
                self.received += 1
                self._publish(event)

    async def close(self) -> None:
        """Stop listening (the app's shutdown)."""
        task, self._task = self._task, None
        listener, self._listener = self._listener, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if listener is not None:
            await asyncio.get_running_loop().run_in_executor(None, listener.close)


def sse(event: str, data: Any) -> str:
    """One Server-Sent Event; ``data`` as JSON on one line (JSON escapes newlines)."""
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"
