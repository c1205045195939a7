"""Live updates: one LISTEN on the engine's workflow events, fanned out to browsers.

The console opens ONE dedicated connection per process (not one per browser tab) that
LISTENs on :data:`swf_celery.workflows.coordinator.EVENTS_NOTIFY_CHANNEL` and hands each
event ``{"run_id", "step", "status"}`` to every subscribed Server-Sent-Events stream. It
starts with the first subscriber. When the connection drops it reconnects with backoff
and sends subscribers a ``{"gap": true}`` marker: events sent meanwhile are lost (Postgres
does not keep NOTIFYs), so pages re-read the state they show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from swf_celery.db import named_dsn
from swf_celery.workflows.coordinator import EVENTS_NOTIFY_CHANNEL, listen_statement

log = logging.getLogger(__name__)

#: Events a slow browser may fall behind by before it is told to re-read (a gap).
SUBSCRIBER_BUFFER = 1000
GAP: dict[str, Any] = {"gap": True}


class EventHub:
    """Fan-out of workflow events to asyncio subscribers (one per SSE stream)."""

    def __init__(self, dsn: str, *, max_backoff: float = 5.0) -> None:
        self._dsn = dsn
        self._max_backoff = max_backoff
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        #: Events received since start (shown by /metrics).
        self.received = 0
        #: Times the LISTEN connection was re-established.
        self.reconnects = 0

    async def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._listening = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="swf-ui-events")
        # LISTEN is in place before the caller reads state: no event falls in between.
        await asyncio.wait_for(self._listening.wait(), timeout=30)

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

    async def _run(self) -> None:
        backoff = 0.1
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    named_dsn(self._dsn, "listen"), autocommit=True)
            except psycopg.Error as exc:
                log.warning("console: cannot LISTEN on %s (%s); retrying", EVENTS_NOTIFY_CHANNEL,
                            exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            try:
                await conn.execute(listen_statement())
                if not first:
                    self.reconnects += 1
                    self._publish(GAP)
                first = False
                backoff = 0.1
                self._listening.set()
                async for note in conn.notifies():
                    try:
                        event = json.loads(note.payload)
                    except ValueError:
                        continue
                    if isinstance(event, dict):
                        self.received += 1
                        self._publish(event)
            except psycopg.Error as exc:
                log.warning("console: events connection lost (%s); reconnecting", exc)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def close(self) -> None:
        """Stop listening (the app's shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


def sse(event: str, data: Any) -> str:
    """One Server-Sent Event; ``data`` as JSON on one line (JSON escapes newlines)."""
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"
