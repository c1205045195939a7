"""Local execution: steps with ``execution="local"`` run in the process that started the run.

They go through the same state machine as distributed steps: the coordinator leaves a
ready local task ``queued`` (no broker message), the :class:`LocalRunner` of the run's
process claims it (``swf.claim_local_tasks``), runs the function in a thread pool and
reports the outcome with the same ``swf.complete_task`` / ``swf.fail_task`` calls a
worker uses. Status, retries, timeouts, pause and cancel therefore behave the same.

A local step runs only while the process that started the run is alive and driving it
(``Executor.execute`` blocks; ``Executor.start`` drives it from a background thread).
A timed-out local attempt is failed by the coordinator; Python cannot stop its thread,
so the late result is ignored when it arrives.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from swf_celery import coordinator
from swf_celery.db import Database
from swf_celery.definition import WorkflowDef
from swf_celery.errors import DatabaseUnavailable

log = logging.getLogger("swf_celery.local")


class LocalRunner:
    """Runs one run's local step tasks in a bounded thread pool."""

    def __init__(self, db: Database, workflow: WorkflowDef, run_id: str,
                 max_workers: int | None = None) -> None:
        self.db = db
        self.run_id = run_id
        self._functions = {s.name: s.function for s in workflow.steps
                           if s.execution == "local"}
        self._slots = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._pool = ThreadPoolExecutor(self._slots, thread_name_prefix=f"swf-local-{run_id[:8]}")
        self._busy = 0
        self._lock = threading.Lock()
        self._closed = False
        self._claiming = threading.Lock()

    def pump(self) -> int:
        """Claim and submit as many due local tasks as there are free threads."""
        with self._claiming:  # one claim at a time, so busy never exceeds the slots
            with self._lock:
                free = self._slots - self._busy
                if self._closed or free <= 0:
                    return 0
            claimed = coordinator.claim_local_tasks(self.db, self.run_id, free)
            with self._lock:
                self._busy += len(claimed)
            for task_id, task in claimed:
                try:
                    self._pool.submit(self._run, task_id, task)
                except RuntimeError:  # closed meanwhile: the attempt times out or is retried
                    with self._lock:
                        self._busy -= 1
            return len(claimed)

    def _run(self, task_id: str, task: dict[str, Any]) -> None:
        try:
            function = self._functions.get(task["step"])
            if function is None:
                coordinator.fail_task(self.db, task_id,
                                      f"no local function for step {task['step']!r}")
                return
            try:
                output = function(task["input"])
            except Exception as exc:  # the step's own failure: retried or fails the run
                self._report(coordinator.fail_task, task_id, f"{type(exc).__name__}: {exc}")
                return
            self._report(coordinator.complete_task, task_id, output)
        finally:
            with self._lock:
                self._busy -= 1
                closed = self._closed
            if not closed:
                # Take the next due work at once: a map item's completion emits no event.
                self.pump()

    def _report(self, call: Callable[[Database, str, Any], str], task_id: str,
                value: Any) -> None:
        # The outcome is worth a few retries over a database restart; if it is lost, the
        # attempt stays started and its timeout (if any) retries it.
        for delay in (0.5, 1.0, 2.0, None):
            try:
                call(self.db, task_id, value)
                return
            except DatabaseUnavailable as exc:
                if delay is None:
                    log.error("run %s: lost the outcome of task %s: %s", self.run_id,
                              task_id, exc)
                    return
                time.sleep(delay)

    def close(self) -> None:
        """Stop taking work; threads of timed-out attempts are not waited for."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
