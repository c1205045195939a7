"""Runs driven from this process: local steps, and waiting for a run on its events.

Steps with ``execution="local"`` run in the process that started the run.

They go through the same state machine as distributed steps: the coordinator leaves a
ready local task ``queued`` (no broker message), the :class:`LocalRunner` of the run's
process claims it (``swf.claim_local_tasks``), runs the function in a thread pool and
reports the outcome with the same ``swf.complete_task`` / ``swf.fail_task`` calls a
worker uses. Status, retries, timeouts, pause and cancel therefore behave the same.

A local step runs only while a process drives the run (``Executor.execute`` blocks;
``Executor.start`` drives it from a background thread; ``Executor.resume`` takes it over).
The driver holds the run's lease (``lease`` seconds, renewed as it drives, see
``swf.drive_run``): when the driver dies, the lease runs out and the run fails with that
reason, ready for retry, unless another process took it over first. Any process can, since
each local step records its function's import path (:mod:`.imports`).
A timed-out local attempt is failed by the coordinator; Python cannot stop its thread,
so the late result is ignored when it arrives. Every outcome is reported: an output that
cannot be stored fails the attempt with the reason; a report that never reaches the
database is logged and the attempt stays started until its timeout (if any) retries it.

Workflows with local steps that this process started are remembered by slug
(:func:`remember`, :func:`known_workflow`), so a retry of one of their runs from this
process finds the step functions without being given them again; other processes import
them (:func:`run_functions`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from swf_celery.db import Database
from swf_celery.db.listening import ListenConnection
from swf_celery.errors import (
    DatabaseUnavailable,
    RunNotFound,
    RunStateError,
    StepFunctionError,
    SwfError,
    WorkflowTimeout,
)
from swf_celery.workflows import conditions, coordinator, imports
from swf_celery.workflows.definition import WorkflowDef

log = logging.getLogger("swf_celery.workflows.local_runner")

#: Longest sleep between two looks at a run when no event arrives (a safety net for a
#: dropped notification; events normally wake the waiter at once).
FALLBACK_WAKE_S = 5.0
#: Consecutive database outages a background driver rides out before it gives up.
BACKGROUND_RETRIES = 10
#: Seconds a driver's lease on a run lasts; it is renewed while the driver lives.
DEFAULT_LEASE_S = 30.0

_known: dict[str, WorkflowDef] = {}
_known_lock = threading.Lock()


def remember(workflow: WorkflowDef) -> None:
    """Keep the functions of a workflow with local steps for retries from this process."""
    if workflow.has_local_steps:
        with _known_lock:
            _known[workflow.slug] = workflow


def known_workflow(slug: str) -> WorkflowDef | None:
    """The workflow of ``slug`` that this process last ran with local steps, if any."""
    with _known_lock:
        return _known.get(slug)


def local_functions(workflow: WorkflowDef) -> dict[str, Any]:
    """``{step name: function}`` of a workflow's local steps."""
    return {s.name: s.function for s in workflow.steps if s.execution == "local"}


def local_conditions(workflow: WorkflowDef) -> dict[str, Any]:
    """``{step name: (kind, predicate)}`` of a workflow's conditional local steps."""
    return {s.name: s.condition for s in workflow.steps
            if s.execution == "local" and s.condition is not None}


def run_functions(db: Database, run_id: str) -> dict[str, Any]:
    """The functions of a run's local steps, imported from the paths it recorded;
    :class:`StepFunctionError` naming each step that cannot be imported, and why."""
    row = db.fetch_one(coordinator.QUERIES["run_functions"], {"run_id": run_id})
    if row is None:
        raise RunNotFound(f"run {run_id} does not exist")
    run_input, refs = row
    functions, problems = {}, []
    for name, ref in (refs or {}).items():
        try:
            functions[name] = imports.load(ref, name, run_input)
        except StepFunctionError as exc:
            problems.append(str(exc))
    if problems:
        raise StepFunctionError(f"run {run_id}: " + "; ".join(problems))
    return functions


def driver_name() -> str:
    """A name for one driver of a run: host, process id and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class LocalRunner:
    """Runs one run's local step tasks in a bounded thread pool, holding the run's lease."""

    def __init__(self, db: Database, functions: WorkflowDef | dict[str, Any], run_id: str,
                 max_workers: int | None = None, *, lease: float = DEFAULT_LEASE_S,
                 take_over: bool = False) -> None:
        self.db = db
        self.run_id = run_id
        self._conditions: dict[str, Any] = {}
        if isinstance(functions, WorkflowDef):
            self._conditions = local_conditions(functions)
            functions = local_functions(functions)
        self._functions = dict(functions)
        #: Who holds the run's lease while this runner drives it.
        self.owner = driver_name()
        self.lease = lease
        self._take = take_over
        self._slots = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._pool = ThreadPoolExecutor(self._slots, thread_name_prefix=f"swf-local-{run_id[:8]}")
        self._busy = 0
        self._lock = threading.Lock()
        self._closed = False
        self._claiming = threading.Lock()
        self._submitted: dict[Future[None], str] = {}

    def tick(self) -> dict[str, Any] | None:
        """Take or renew the run's lease and return its state (as
        :func:`~.coordinator.refresh_run`); :class:`RunStateError` when another driver
        holds it (the first tick, without ``take_over``) or took it over."""
        state = coordinator.drive_run(self.db, self.run_id, self.owner,
                                      int(self.lease * 1000), self._take)
        self._take = False  # taken once: later ticks only renew
        if state is not None and "held_by" in state:
            with self._lock:
                self._closed = True
            raise RunStateError(
                f"run {self.run_id} is driven by {state['held_by']} (its lease runs until "
                f"{state['until']}); take it over with Executor.resume(run_id, "
                "take_over=True)")
        return state

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
                    future = self._pool.submit(self._run, task_id, task)
                    with self._lock:
                        self._submitted[future] = task_id
                except RuntimeError:  # closed meanwhile: the attempt never runs
                    with self._lock:
                        self._busy -= 1
                    self._give_back(task_id)
            return len(claimed)

    def _run(self, task_id: str, task: dict[str, Any]) -> None:
        with self._lock:
            self._submitted = {f: t for f, t in self._submitted.items() if t != task_id}
        try:
            function = self._functions.get(task["step"])
            if function is None:
                self._report(coordinator.fail_task, task_id,
                             f"no local function for step {task['step']!r}")
                return
            try:
                skip = conditions.skip_reason(task, self._conditions.get(task["step"]))
                if skip is not None:
                    self._report(coordinator.skip_task, task_id, skip)
                    return
                output = function(task["input"])
            except Exception as exc:  # the step's own failure: retried or fails the run
                self._report(coordinator.fail_task, task_id, coordinator.describe(exc))
                return
            ok, value = coordinator.step_result(output)
            self._report(coordinator.complete_task if ok else coordinator.fail_task,
                         task_id, value)
        finally:
            with self._lock:
                self._busy -= 1
                closed = self._closed
            if not closed:
                # Take the next due work at once: a map item's completion emits no event.
                self.pump()

    def _report(self, call: Callable[[Database, str, Any], str], task_id: str,
                value: Any) -> None:
        # If the outcome is lost, the attempt stays started and its timeout (if any)
        # retries it.
        try:
            coordinator.report_outcome(call, self.db, task_id, value)
        except SwfError as exc:
            log.error("run %s: lost the outcome of task %s: %s", self.run_id, task_id, exc)

    def close(self) -> None:
        """Stop taking work; threads of timed-out attempts are not waited for."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            never_ran = [t for f, t in self._submitted.items() if f.cancelled()]
            self._submitted.clear()
        for task_id in never_ran:
            self._give_back(task_id)

    def _give_back(self, task_id: str) -> None:
        # A claimed attempt that will never run here ends now (cancelled in a finished run,
        # retried in an active one), rather than staying started for a retry to adopt.
        try:
            coordinator.abandon_task(self.db, task_id, "local runner stopped before it ran")
        except SwfError as exc:
            log.warning("run %s: could not give back task %s: %s", self.run_id, task_id, exc)


def drive(db: Database, run_id: str, runner: LocalRunner | None, deadline: float | None,
          *, watch_steps: bool) -> dict[str, Any]:
    """Wait for a run to end (woken by its events), pumping its local tasks; return its
    final state. :class:`WorkflowTimeout` once ``deadline`` (monotonic) passes."""
    listener = ListenConnection(db.dsn, [coordinator.EVENTS_NOTIFY_CHANNEL],
                                name=f"swf-run-{run_id[:8]}-events")
    try:
        while True:
            state = (coordinator.refresh_run(db, run_id) if runner is None
                     else runner.tick())
            if state is None:
                raise RunNotFound(f"run {run_id} does not exist")
            if state["status"] in coordinator.TERMINAL:
                return state
            wait = FALLBACK_WAKE_S
            if runner is not None:
                runner.pump()
                wait = min(wait, runner.lease / 3)
            if state["wake_in_ms"] is not None:
                wait = min(wait, float(state["wake_in_ms"]) / 1000 + 0.005)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkflowTimeout(
                        f"run {run_id} did not finish in time; it keeps running (cancel it "
                        "with cancel_workflow_run, or wait for it with Executor.wait)",
                        run_id=run_id)
                wait = min(wait, left)
            _await_event(listener, run_id, wait, watch_steps)
    finally:
        listener.close()


def _await_event(listener: ListenConnection, run_id: str, wait: float,
                 watch_steps: bool) -> None:
    """Return when an event of this run arrives (any step event if ``watch_steps``), or a
    gap (events may have been missed: the caller re-reads the run)."""
    end = time.monotonic() + wait
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        for item in listener.take(left):
            if item.gap is not None:
                return
            event = coordinator.parse_event(item.payload)
            if event is not None and event["run_id"] == run_id \
                    and (watch_steps or event["step"] is None):
                return


def drive_in_background(db: Database, functions: WorkflowDef | dict[str, Any], run_id: str,
                        max_local_workers: int | None, *,
                        lease: float = DEFAULT_LEASE_S) -> None:
    """Run the local steps of ``run_id`` from a daemon thread until the run ends."""
    if not (local_functions(functions) if isinstance(functions, WorkflowDef) else functions):
        return
    runner = LocalRunner(db, functions, run_id, max_local_workers, lease=lease)

    def keep_driving() -> None:
        # A background driver has no caller to raise to: it rides out a short database
        # outage (a restart), and logs and stops when the database stays away.
        failures = 0
        try:
            while True:
                try:
                    drive(db, run_id, runner, None, watch_steps=True)
                    return
                except DatabaseUnavailable as exc:
                    failures += 1
                    if failures > BACKGROUND_RETRIES:
                        log.error("run %s: giving up driving local steps: %s", run_id, exc)
                        return
                    time.sleep(min(5.0, 0.5 * failures))
                except SwfError as exc:
                    log.error("run %s: stopped driving local steps: %s", run_id, exc)
                    return
        finally:
            runner.close()

    threading.Thread(target=keep_driving, name=f"swf-run-{run_id[:8]}", daemon=True).start()
