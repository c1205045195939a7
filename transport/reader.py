"""The event loop's reader thread: the consumer's statements run here, not in the hub.

Celery's worker hub is one thread that also feeds the prefork pool and takes its results.
A read is a round trip to PostgreSQL; run in the hub, the pool waits for it. :class:`Reader`
runs one job at a time in a daemon thread and makes :attr:`Reader.fd` readable when it is
done, so the hub picks the outcome up (:meth:`Reader.take`) like any other event.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any


class Reader:
    """Runs submitted jobs in order in one thread; their outcomes come back through a pipe."""

    def __init__(self, name: str = "swf-reader") -> None:
        self._jobs: SimpleQueue[Callable[[], Any] | None] = SimpleQueue()
        self._done: deque[tuple[Any, BaseException | None]] = deque()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def fd(self) -> int:
        """Readable when a job has finished (a hub reader)."""
        return self._r

    def submit(self, job: Callable[[], Any]) -> None:
        """Run ``job`` in the reader thread after the jobs before it."""
        self._jobs.put(job)

    def take(self) -> list[tuple[Any, BaseException | None]]:
        """The (result, error) of every job finished since the last call, oldest first."""
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._r, 4096):
                pass
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def close(self, timeout: float = 10.0) -> list[tuple[Any, BaseException | None]]:
        """Stop after the job under way (waiting up to ``timeout`` s); return the outcomes
        nobody took. The pipe is closed."""
        self._jobs.put(None)
        self._thread.join(timeout)
        left = self.take()
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)
        return left

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                outcome: tuple[Any, BaseException | None] = (job(), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the hub thread
                outcome = (None, exc)
            self._done.append(outcome)
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._w, b"!")
