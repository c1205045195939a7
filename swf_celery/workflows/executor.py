"""Running workflows: ``Executor.execute`` (blocking), ``start`` and the dynamic forms.

``Executor.execute(workflow, input, repo, timeout=300_000)`` validates the workflow,
starts a run (one transaction that records it and dispatches its root steps), drives its
local steps, and waits — woken by the coordinator's NOTIFY events, not by polling — until
the run ends. It returns a :class:`RunResult` (``.output`` is ``{leaf step: output}``,
``.run_id`` the run's id); a failed run raises :class:`~swf_celery.errors.WorkflowFailed`
(``run_id``, ``step``, ``cause``). ``timeout`` is the seed's maximum execution time: a run
still going after ``timeout`` milliseconds is cancelled (queued steps removed, running ones
revoked with ``terminate=True``) and :class:`~swf_celery.errors.WorkflowTimeout` is raised;
``on_timeout="keep"`` leaves it running instead (wait again with ``Executor.wait``).

The resource -> queue map used to route steps that name resources but no queue is
``resource_queues=`` here, merged over the Celery setting ``swf_resource_queues``.

Local steps run in the process that drives the run, which holds the run's lease (``lease``
seconds, renewed while it drives): if it dies, the run fails once the lease runs out, with
that reason, unless another process takes it over first with :meth:`Executor.resume`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from swf_celery.db import Database, DatabaseHandle, resolve
from swf_celery.errors import ArgumentError, SwfError, WorkflowFailed, WorkflowTimeout
from swf_celery.limits.idempotency import DEFAULT_WINDOW, claim, once
from swf_celery.ops.canvas import revoke_tasks
from swf_celery.workflows import coordinator, definition, flows
from swf_celery.workflows.local_runner import (
    DEFAULT_LEASE_S,
    LocalRunner,
    drive,
    drive_in_background,
    remember,
    run_functions,
)

DEFAULT_TIMEOUT_MS = 300_000
#: What ``execute`` does with a run that exceeds its timeout.
ON_TIMEOUT = ("cancel", "keep")


@dataclass(frozen=True)
class RunResult:
    """A completed run: its id and its output ``{leaf step name: output}``."""

    run_id: str
    output: dict[str, Any]


class Executor:
    """Start and await workflow runs (the seed's ``Executor``)."""

    @staticmethod
    def execute(workflow: Any, input: Any, repo: DatabaseHandle | None = None,
                timeout: int | None = DEFAULT_TIMEOUT_MS, *,
                resource_queues: Mapping[str, str] | None = None,
                max_local_workers: int | None = None, on_timeout: str = "cancel",
                app: Any = None, lease: float = DEFAULT_LEASE_S,
                idempotency_key: str | None = None,
                idempotency_window: float = DEFAULT_WINDOW) -> RunResult:
        """Run ``workflow`` on ``input`` and block until it ends.

        ``timeout`` (ms, ``None``: no limit) is the run's maximum execution time: past it
        the run is cancelled (``on_timeout="keep"``: left running) and
        :class:`~swf_celery.errors.WorkflowTimeout` is raised. Running steps are revoked
        through ``app`` (default: a Celery app on this database's broker).
        ``idempotency_key``: a run started with the same key within ``idempotency_window``
        seconds is not started again; its result is waited for and returned.
        """
        wf = definition.load(workflow, resource_queues=resource_queues)
        db = resolve(repo)
        if idempotency_key is not None:
            run_id, new = _start_once(db, wf, input, idempotency_key, idempotency_window)
            if not new:
                return Executor.wait(run_id, db, timeout)
            return _run_blocking(db, wf, input, timeout, max_local_workers, False, on_timeout,
                                 app, lease, run_id=run_id)
        return _run_blocking(db, wf, input, timeout, max_local_workers, False, on_timeout, app,
                             lease)

    @staticmethod
    def start(workflow: Any, input: Any, repo: DatabaseHandle | None = None, *,
              resource_queues: Mapping[str, str] | None = None,
              max_local_workers: int | None = None, lease: float = DEFAULT_LEASE_S,
              idempotency_key: str | None = None,
              idempotency_window: float = DEFAULT_WINDOW) -> str:
        """Start a run and return its id at once.

        Local steps of the run execute in this process, driven by a background thread
        that ends with the run; distributed steps need only the Celery workers.
        ``idempotency_key``: a run started with the same key within ``idempotency_window``
        seconds is not started again; its id is returned.
        """
        wf = definition.load(workflow, resource_queues=resource_queues)
        db = resolve(repo)
        if idempotency_key is not None:
            run_id, new = _start_once(db, wf, input, idempotency_key, idempotency_window)
            if new:
                remember(wf)
                drive_in_background(db, wf, run_id, max_local_workers, lease=lease)
            return run_id
        return _run_background(db, wf, input, max_local_workers, False, lease)

    @staticmethod
    def execute_dynamic(workflow_id: str, input: Any, step_functions: Mapping[str, Any],
                        repo: DatabaseHandle | None = None,
                        timeout: int | None = DEFAULT_TIMEOUT_MS, *,
                        resource_queues: Mapping[str, str] | None = None,
                        max_local_workers: int | None = None, on_timeout: str = "cancel",
                        app: Any = None, lease: float = DEFAULT_LEASE_S) -> RunResult:
        """Run a stored flow; ``step_functions`` maps its step names to tasks/callables.

        ``timeout`` and ``on_timeout`` as for :meth:`execute`.
        """
        db = resolve(repo)
        wf = flows.load_dynamic(workflow_id, step_functions, db,
                                resource_queues=resource_queues)
        return _run_blocking(db, wf, input, timeout, max_local_workers, True, on_timeout, app,
                             lease)

    @staticmethod
    def start_dynamic(workflow_id: str, input: Any, step_functions: Mapping[str, Any],
                      repo: DatabaseHandle | None = None, *,
                      resource_queues: Mapping[str, str] | None = None,
                      max_local_workers: int | None = None,
                      lease: float = DEFAULT_LEASE_S) -> str:
        """Start a run of a stored flow and return its id at once."""
        db = resolve(repo)
        wf = flows.load_dynamic(workflow_id, step_functions, db,
                                resource_queues=resource_queues)
        return _run_background(db, wf, input, max_local_workers, True, lease)

    @staticmethod
    def resume(run_id: str, repo: DatabaseHandle | None = None,
               timeout: int | None = DEFAULT_TIMEOUT_MS, *,
               step_functions: Mapping[str, Any] | None = None, take_over: bool = False,
               max_local_workers: int | None = None,
               lease: float = DEFAULT_LEASE_S) -> RunResult:
        """Drive a run whose driver stopped: run its local steps here until it ends.

        The functions are those its steps recorded (imported by path) unless
        ``step_functions`` maps step names to them. A run whose lease another driver still
        holds raises :class:`~swf_celery.errors.RunStateError` naming it, unless
        ``take_over=True``: then that driver's running local attempts fail (and are retried
        here). Blocks like :meth:`wait` (``timeout`` in ms: past it the run keeps going,
        driven by nobody, and :class:`~swf_celery.errors.WorkflowTimeout` is raised).
        """
        db = resolve(repo)
        rid = str(run_id)
        functions = dict(step_functions) if step_functions is not None \
            else run_functions(db, rid)
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        runner = LocalRunner(db, functions, rid, max_local_workers, lease=lease,
                             take_over=take_over)
        try:
            return _result(rid, drive(db, rid, runner, deadline, watch_steps=True))
        finally:
            runner.close()

    @staticmethod
    def wait(run_id: str, repo: DatabaseHandle | None = None,
             timeout: int | None = DEFAULT_TIMEOUT_MS) -> RunResult:
        """Block until a run ends; its result, or :class:`WorkflowFailed`.

        Local steps run only in the process that started the run.
        """
        db = resolve(repo)
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        return _result(run_id, drive(db, run_id, None, deadline, watch_steps=True))


def _start_once(db: Database, wf: definition.WorkflowDef, run_input: Any, key: str,
                window: float) -> tuple[str, bool]:
    """Start a run unless ``key`` names one already: (run id, whether it is new). The run
    and the key's claim commit together; a run started by a concurrent claim of the same key
    is rolled back and the first run's id returned."""
    if not isinstance(key, str) or not key:
        raise ArgumentError(f"idempotency_key must be a non-empty text, not {key!r}")
    holder = None
    with once(db) as conn:
        run_id = coordinator.start_run(db, wf, run_input)
        holder = claim(conn, "run", key, run_id, window)
        if holder != run_id:
            raise psycopg.Rollback()
    return holder, holder == run_id


def _run_blocking(db: Database, wf: definition.WorkflowDef, run_input: Any,
                  timeout: int | None, max_local_workers: int | None,
                  dynamic: bool, on_timeout: str = "cancel", app: Any = None,
                  lease: float = DEFAULT_LEASE_S, *, run_id: str | None = None) -> RunResult:
    check_on_timeout(on_timeout)
    deadline = None if timeout is None else time.monotonic() + timeout / 1000
    remember(wf)
    if run_id is None:
        run_id = coordinator.start_run(db, wf, run_input, dynamic=dynamic)
    runner = (LocalRunner(db, wf, run_id, max_local_workers, lease=lease)
              if wf.has_local_steps else None)
    try:
        state = drive(db, run_id, runner, deadline, watch_steps=_watch_steps(wf))
    except WorkflowTimeout:
        if on_timeout == "keep":
            raise
        raise cancel_on_timeout(db, run_id, timeout, app) from None
    finally:
        if runner is not None:
            runner.close()
    return _result(run_id, state)


def check_on_timeout(on_timeout: str) -> None:
    """Refuse an ``on_timeout`` that is not one of :data:`ON_TIMEOUT`."""
    if on_timeout not in ON_TIMEOUT:
        raise ArgumentError(f"on_timeout must be one of {ON_TIMEOUT}, not {on_timeout!r}")


def cancel_on_timeout(db: Database, run_id: str, timeout: int | None,
                      app: Any) -> WorkflowTimeout:
    """Cancel a run that exceeded ``timeout`` ms (running steps revoked with ``terminate``)
    and return the :class:`WorkflowTimeout` to raise."""
    try:
        running = coordinator.cancel_run(db, run_id, f"timed out after {timeout} ms")
    except SwfError:  # it ended meanwhile (RunStateError): nothing to cancel
        running = []
    if running:
        revoke_tasks(db, running, app=app, terminate=True)
    return WorkflowTimeout(f"run {run_id} exceeded its maximum execution time of "
                           f"{timeout} ms and was cancelled (on_timeout='keep' leaves "
                           "it running)", run_id=run_id)


def _run_background(db: Database, wf: definition.WorkflowDef, run_input: Any,
                    max_local_workers: int | None, dynamic: bool,
                    lease: float = DEFAULT_LEASE_S) -> str:
    remember(wf)
    run_id = coordinator.start_run(db, wf, run_input, dynamic=dynamic)
    drive_in_background(db, wf, run_id, max_local_workers, lease=lease)
    return run_id


def _watch_steps(wf: definition.WorkflowDef) -> bool:
    # Step events matter when this process runs local steps or must expire timed-out
    # attempts; otherwise only the run's own events (completed/failed/...) wake us.
    return wf.has_local_steps or any(s.timeout is not None for s in wf.steps)


def _result(run_id: str, state: dict[str, Any]) -> RunResult:
    if state["status"] == "completed":
        return RunResult(run_id, state["output"] or {})
    step = state.get("failed_step")
    cause = state.get("error") or state["status"]
    where = f" at step {step!r}" if step else ""
    raise WorkflowFailed(f"run {run_id} {state['status']}{where}: {cause}",
                         run_id=run_id, step=step, cause=cause)
