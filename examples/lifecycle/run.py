"""Pause, resume, cancel and retry running workflows: ``python -m examples.lifecycle.run``.

Starts a worker on the ``reports`` queue, then:

1. pauses a run while its first step runs (that step finishes, the next one waits),
   and resumes it;
2. lets a run fail at its quality gate, fixes the cause and retries it: the new run
   reuses the completed steps' outputs and runs only the rest;
3. cancels a run while a step runs (the step is revoked, the rest never starts).

Each stage prints the run's status and its steps' statuses.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import swf_celery as swf
from examples.lifecycle.app import DATABASE_URL, QUEUE, RUNNING_CHANNEL, ReportFlow
from swf_celery.messaging.listen import Listener
from swf_celery.ops import migrate
from swf_celery.testing import worker_process

APP = "examples.lifecycle.app"
DB = DATABASE_URL


def show(label: str, run_id: str) -> swf.RunStatus:
    status = swf.get_run_status(run_id, DB)
    steps = "  ".join(f"{s.name}={s.status}" for s in status.steps)
    extra = f"  error: {status.error}" if status.error else ""
    print(f"  {label:<22} run {run_id[:8]} {status.status:<11} {steps}{extra}")
    return status


def wait_for(events: Listener, run_id: str, step: str | None, status: str) -> None:
    """Block until the engine announces ``step`` (None: the run) reaching ``status``."""
    current = swf.get_run_status(run_id, DB)
    done = current.status == status if step is None else \
        any(s.name == step and s.status == status for s in current.steps)
    deadline = time.monotonic() + 60
    while not done:
        note = events.get(timeout=max(0.0, deadline - time.monotonic()))
        if note is None:
            raise TimeoutError(f"run {run_id}: {step or 'run'} never became {status}")
        event = note.json() if note.payload is not None else {}
        done = (event.get("run_id") == run_id and event.get("step") == step
                and event.get("status") == status)


def wait_running(running: Listener, tag: str, step: str) -> None:
    """Block until ``step`` of the run tagged ``tag`` says it is executing on a worker."""
    deadline = time.monotonic() + 60
    while True:
        note = running.get(timeout=max(0.0, deadline - time.monotonic()))
        if note is None:
            raise TimeoutError(f"{step} of {tag} never ran")
        if note.json() == {"tag": tag, "step": step}:
            return


def main() -> int:
    migrate.migrate(DB)
    gate = Path(tempfile.mkdtemp(prefix="swf-lifecycle-")) / "upstream-ready"
    gate.touch()
    print(f"starting: celery -A {APP} worker -Q {QUEUE}")
    with worker_process(APP, queues=[QUEUE], concurrency=2), \
            swf.listen("workflow_events", DB) as events, \
            swf.listen(RUNNING_CHANNEL, DB) as running:
        print("1. pause and resume")
        run = swf.Executor.start(ReportFlow, {"gate": str(gate), "tag": "first"}, DB)
        wait_running(running, "first", "extract")
        swf.pause_workflow_run(run, DB)
        show("paused", run)
        wait_for(events, run, "extract", "completed")
        show("extract finished", run)   # transform is ready but waits for resume
        swf.resume_workflow_run(run, DB)
        show("resumed", run)
        wait_for(events, run, None, "completed")
        show("completed", run)

        print("2. fail, fix, retry")
        gate.unlink()                    # the upstream data is not there yet
        run = swf.Executor.start(ReportFlow, {"gate": str(gate), "tag": "second",
                                              "seconds": 0.3}, DB)
        wait_for(events, run, None, "failed")
        failed = show("failed", run)
        gate.touch()                     # fixed
        retry = swf.retry_failed_workflow(run, DB)
        result = swf.Executor.wait(retry, DB, timeout=60_000)
        status = show("retry completed", retry)
        before = {s.name: s.started_at for s in failed.steps}
        reused = [s.name for s in status.steps if s.started_at == before[s.name]]
        print(f"  retry {retry[:8]} is retry_of {status.retry_of[:8]}; "
              f"reused without running again: {', '.join(reused)}")

        print("3. cancel")
        run = swf.Executor.start(ReportFlow, {"gate": str(gate), "tag": "third"}, DB)
        wait_running(running, "third", "transform")
        show("transform running", run)
        swf.cancel_workflow_run(run, DB, reason="report no longer needed")
        show("cancelled", run)
    print(f"result: {result.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
