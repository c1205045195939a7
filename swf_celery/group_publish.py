"""A Celery group's messages published in one insert per queue.

Celery publishes a group, and a chord's header (a group), one message at a time on one
producer, and kombu has no hook around the whole. :func:`connect` (run by ``import
swf_celery``) wraps ``celery.canvas.group._apply_tasks`` in :func:`batched`, when Celery
loads ``celery.canvas`` (on the first signature built) or at once if it has, the way
instrumentation libraries hook Celery (a post-import hook). Inside it, the
``swf://`` channel keeps each plain message (one without a flow key or an idempotency key)
instead of sending it, and the batch sends them at the end: one ``send_many`` statement
(transport/storage.sql) per queue and connection, one wake-up per consumer asleep on the
queue. Other transports never look at the batch, so a group on another broker is published
as before.

What a user sees:

- ``group(...).apply_async()`` returns once every message of the group is stored, as before;
- a group is stored whole or not at all per queue: when building one of its messages raises
  (a task argument the serializer refuses, say), nothing of the group is sent, where Celery
  on Redis has sent the messages before it;
- ``before_task_publish`` / ``after_task_publish`` handlers run per message, as before; the
  messages are stored when the group's last one has been built;
- inside ``swf.transaction(conn)`` the insert is part of the caller's transaction.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from swf_celery.transport.channel import Channel

logger = logging.getLogger(__name__)

#: Attempts at sending a batch whose connection fails (the insert is atomic: a failed
#: attempt stored nothing), as kombu retries a single publish.
SEND_ATTEMPTS = 3
#: Seconds before the second attempt; each later one waits this much longer.
SEND_RETRY_STEP = 0.2


@dataclass
class _QueueBatch:
    """Messages kept for one queue, publish order, on one connection."""

    channel: Channel
    queue: str
    joined: psycopg.Connection[Any] | None
    messages: list[dict[str, Any]] = field(default_factory=list)
    delays: list[int] = field(default_factory=list)


class PublishBatch:
    """The messages kept while a group is applied, by queue."""

    def __init__(self) -> None:
        self._queues: dict[tuple[int, str, int], _QueueBatch] = {}

    def add(self, channel: Channel, queue: str, message: dict[str, Any], delay: int,
            joined: psycopg.Connection[Any] | None) -> None:
        """Keep ``message`` for ``queue`` (sent by :meth:`send`)."""
        key = (id(channel), queue, id(joined))
        kept = self._queues.get(key)
        if kept is None:
            kept = self._queues[key] = _QueueBatch(channel, queue, joined)
        kept.messages.append(message)
        kept.delays.append(delay)

    def send(self) -> None:
        """Store every kept message: one insert per queue, in the order they were kept."""
        queues, self._queues = list(self._queues.values()), {}
        for kept in queues:
            _send(kept)


def _send(kept: _QueueBatch) -> None:
    errors = kept.channel.connection.connection_errors if kept.joined is None else ()
    for attempt in range(SEND_ATTEMPTS):
        try:
            kept.channel.send_many(kept.queue, kept.messages, kept.delays, kept.joined)
            return
        except errors as exc:
            if attempt == SEND_ATTEMPTS - 1:
                raise
            logger.warning("swf broker: sending %d messages to %r failed (%s); retrying",
                           len(kept.messages), kept.queue, exc)
            time.sleep(SEND_RETRY_STEP * (attempt + 1))


_current: ContextVar[PublishBatch | None] = ContextVar("swf_publish_batch", default=None)


def current() -> PublishBatch | None:
    """The batch open in this context, or None."""
    return _current.get()


@contextlib.contextmanager
def batched() -> Iterator[PublishBatch]:
    """Keep the plain messages published inside the block and send them at its end.

    Nested blocks join the outer one. When the block raises, nothing it kept is sent.
    """
    batch = _current.get()
    if batch is not None:
        yield batch
        return
    batch = PublishBatch()
    token = _current.set(batch)
    try:
        yield batch
    finally:
        _current.reset(token)
    batch.send()


_CANVAS = "celery.canvas"


def connect() -> None:
    """Apply Celery's groups in :func:`batched`: now when ``celery.canvas`` is loaded, else
    when it loads."""
    canvas = sys.modules.get(_CANVAS)
    if canvas is not None:
        _batch_groups(canvas)
    elif not any(isinstance(finder, _CanvasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _CanvasFinder())


class _CanvasFinder(importlib.abc.MetaPathFinder):
    """Finds ``celery.canvas`` with the other finders and batches its groups once loaded."""

    def find_spec(self, fullname: str, path: Any = None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _CANVAS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _BatchingLoader(spec.loader)
        return spec


class _BatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _batch_groups(module)


def _batch_groups(canvas: ModuleType) -> None:
    group = canvas.group
    original = group._apply_tasks
    if getattr(original, "__swf_batched__", False):
        return

    @functools.wraps(original)
    def _apply_tasks(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        # Celery's own generator is drained inside the batch (group.apply_async lists it
        # anyway), so the messages are stored before the first result is handed back.
        with batched():
            results = list(original(self, *args, **kwargs))
        yield from results

    _apply_tasks.__swf_batched__ = True  # type: ignore[attr-defined]
    group._apply_tasks = _apply_tasks
