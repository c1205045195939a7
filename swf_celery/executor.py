"""Running workflows: ``Executor.execute`` (blocking), ``start`` and the dynamic forms.

``Executor.execute(workflow, input, repo, timeout=300_000)`` validates the workflow,
starts a run (one transaction that records it and dispatches its root steps), drives its
local steps, and waits — woken by the coordinator's NOTIFY events, not by polling — until
the run ends. It returns a :class:`RunResult` (``.output`` is ``{leaf step: output}``,
``.run_id`` the run's id); a failed run raises :class:`~swf_celery.errors.WorkflowFailed`
(``run_id``, ``step``, ``cause``); a run still going after ``timeout`` milliseconds
raises :class:`~swf_celery.errors.WorkflowTimeout` and keeps running.

The resource -> queue map used to route steps that name resources but no queue is
``resource_queues=`` here, merged over the Celery setting ``swf_resource_queues``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from swf_celery import coordinator, definition, flows
from swf_celery.db import Database, Repo, resolve
from swf_celery.errors import (
    DatabaseUnavailable,
    RunNotFound,
    SwfError,
    WorkflowFailed,
    WorkflowTimeout,
)
from swf_celery.local import LocalRunner

DEFAULT_TIMEOUT_MS = 300_000
#: Longest sleep between two looks at a run when no event arrives (a safety net for a
#: dropped notification; events normally wake the waiter at once).
FALLBACK_WAKE_S = 5.0
#: Consecutive database outages a background driver rides out before it gives up.
BACKGROUND_RETRIES = 10

log = logging.getLogger("swf_celery.executor")


@dataclass(frozen=True)
class RunResult:
    """A completed run: its id and its output ``{leaf step name: output}``."""

    run_id: str
    output: dict[str, Any]


class Executor:
    """Start and await workflow runs (the seed's ``Executor``)."""

    @staticmethod
    def execute(workflow: Any, input: Any, repo: Repo | None = None,
                timeout: int | None = DEFAULT_TIMEOUT_MS, *,
                resource_queues: Mapping[str, str] | None = None,
                max_local_workers: int | None = None) -> RunResult:
        """Run ``workflow`` on ``input`` and block until it ends (``timeout`` in ms)."""
        wf = definition.load(workflow, resource_queues=resource_queues)
        return _run_blocking(resolve(repo), wf, input, timeout, max_local_workers, False)

    @staticmethod
    def start(workflow: Any, input: Any, repo: Repo | None = None, *,
              resource_queues: Mapping[str, str] | None = None,
              max_local_workers: int | None = None) -> str:
        """Start a run and return its id at once.

        Local steps of the run execute in this process, driven by a background thread
        that ends with the run; distributed steps need only the Celery workers.
        """
        wf = definition.load(workflow, resource_queues=resource_queues)
        return _run_background(resolve(repo), wf, input, max_local_workers, False)

    @staticmethod
    def execute_dynamic(workflow_id: str, input: Any, step_functions: Mapping[str, Any],
                        repo: Repo | None = None, timeout: int | None = DEFAULT_TIMEOUT_MS,
                        *, resource_queues: Mapping[str, str] | None = None,
                        max_local_workers: int | None = None) -> RunResult:
        """Run a stored flow; ``step_functions`` maps its step names to tasks/callables."""
        db = resolve(repo)
        wf = flows.load_dynamic(workflow_id, step_functions, db,
                                resource_queues=resource_queues)
        return _run_blocking(db, wf, input, timeout, max_local_workers, True)

    @staticmethod
    def start_dynamic(workflow_id: str, input: Any, step_functions: Mapping[str, Any],
                      repo: Repo | None = None, *,
                      resource_queues: Mapping[str, str] | None = None,
                      max_local_workers: int | None = None) -> str:
        """Start a run of a stored flow and return its id at once."""
        db = resolve(repo)
        wf = flows.load_dynamic(workflow_id, step_functions, db,
                                resource_queues=resource_queues)
        return _run_background(db, wf, input, max_local_workers, True)

    @staticmethod
    def wait(run_id: str, repo: Repo | None = None,
             timeout: int | None = DEFAULT_TIMEOUT_MS) -> RunResult:
        """Block until a run ends; its result, or :class:`WorkflowFailed`.

        Local steps run only in the process that started the run.
        """
        db = resolve(repo)
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        return _result(run_id, _drive(db, run_id, None, deadline, watch_steps=True))


def _run_blocking(db: Database, wf: definition.WorkflowDef, run_input: Any,
                  timeout: int | None, max_local_workers: int | None,
                  dynamic: bool) -> RunResult:
    deadline = None if timeout is None else time.monotonic() + timeout / 1000
    run_id = coordinator.start_run(db, wf, run_input, dynamic=dynamic)
    runner = LocalRunner(db, wf, run_id, max_local_workers) if wf.has_local_steps else None
    try:
        state = _drive(db, run_id, runner, deadline, watch_steps=_watch_steps(wf))
    finally:
        if runner is not None:
            runner.close()
    return _result(run_id, state)


def _run_background(db: Database, wf: definition.WorkflowDef, run_input: Any,
                    max_local_workers: int | None, dynamic: bool) -> str:
    run_id = coordinator.start_run(db, wf, run_input, dynamic=dynamic)
    drive_in_background(db, wf, run_id, max_local_workers)
    return run_id


def drive_in_background(db: Database, wf: definition.WorkflowDef, run_id: str,
                        max_local_workers: int | None) -> None:
    """Run the local steps of ``run_id`` from a daemon thread until the run ends."""
    if not wf.has_local_steps:
        return
    runner = LocalRunner(db, wf, run_id, max_local_workers)

    def drive() -> None:
        # A background driver has no caller to raise to: it rides out a short database
        # outage (a restart), and logs and stops when the database stays away.
        failures = 0
        try:
            while True:
                try:
                    _drive(db, run_id, runner, None, watch_steps=True)
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

    threading.Thread(target=drive, name=f"swf-run-{run_id[:8]}", daemon=True).start()


def _watch_steps(wf: definition.WorkflowDef) -> bool:
    # Step events matter when this process runs local steps or must expire timed-out
    # attempts; otherwise only the run's own events (completed/failed/...) wake us.
    return wf.has_local_steps or any(s.timeout is not None for s in wf.steps)


def _drive(db: Database, run_id: str, runner: LocalRunner | None, deadline: float | None,
           *, watch_steps: bool) -> dict[str, Any]:
    """Wait for a run to end, pumping its local tasks; return its final state."""
    listener = db.connect(autocommit=True)
    try:
        listener.execute(coordinator.listen_query())
        while True:
            state = coordinator.tick(db, run_id)
            if state is None:
                raise RunNotFound(f"run {run_id} does not exist")
            if state["status"] in coordinator.TERMINAL:
                return state
            if runner is not None:
                runner.pump()
            wait = FALLBACK_WAKE_S
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


def _await_event(listener: Any, run_id: str, wait: float, watch_steps: bool) -> None:
    """Return when an event of this run arrives (any step event if ``watch_steps``)."""
    end = time.monotonic() + wait
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        hit = False
        for note in listener.notifies(timeout=left, stop_after=1):
            try:
                event = json.loads(note.payload)
            except ValueError:
                continue
            if event.get("run_id") == run_id and (watch_steps or event.get("step") is None):
                hit = True
        if hit:
            return


def _result(run_id: str, state: dict[str, Any]) -> RunResult:
    if state["status"] == "completed":
        return RunResult(run_id, state["output"] or {})
    step = state.get("failed_step")
    cause = state.get("error") or state["status"]
    where = f" at step {step!r}" if step else ""
    raise WorkflowFailed(f"run {run_id} {state['status']}{where}: {cause}",
                         run_id=run_id, step=step, cause=cause)
