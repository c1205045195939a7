"""Why a run is not moving, as the doctor's findings (:mod:`.doctor`).

:func:`explain_run` looks at each unfinished attempt of a run and at where its message is:

- paused: the run waits for ``resume`` (ready steps are not dispatched meanwhile);
- a retry due later (after an error, a dead-lettered message, a task the worker did not
  have registered: each named with its remedy);
- a message waiting in a queue nobody consumes, or delayed until its ETA;
- a message held by a worker: running (on which worker, when known), overdue, or held by a
  consumer that is gone (killed) until its visibility timeout;
- a message dead-lettered or missing: nothing will move the run;
- a local step, which only the process that started the run executes;
- a run with nothing left to move it at all (stranded).

:func:`stalled_runs` lists the runs where nothing happened for ``stalled_after`` seconds.
"""

from __future__ import annotations

from typing import Any

import psycopg

from swf_celery.db import load_queries
from swf_celery.ops.doctor_findings import Finding, Limits, seconds, worst
from swf_celery.ops.doctor_health import holder_gone, sessions_since

QUERIES = load_queries(__package__, "doctor_runs.sql")
#: Most attempts of one run the doctor looks at (a map step may have thousands).
TASK_LIMIT = 500
#: The error a worker reports for a step whose task it does not have registered.
UNREGISTERED = "is not registered on worker"
#: The error the engine records for an attempt whose message was dead-lettered.
DEAD_LETTERED = "step message dead-lettered"


def stalled_runs(conn: psycopg.Connection[Any], limits: Limits) -> list[str]:
    """Ids of the active runs where nothing happened for ``limits.stalled_after`` seconds."""
    return [row[0] for row in conn.execute(
        QUERIES["stalled_runs"], {"after": limits.stalled_after, "limit": limits.runs})]


def explain_run(conn: psycopg.Connection[Any], run_id: str,
                limits: Limits | None = None) -> list[Finding]:
    """Why run ``run_id`` is not moving: one finding per cause (grouped per step), worst
    first; empty when the run is finished or unknown."""
    limits = limits or Limits()
    run = conn.execute(QUERIES["run"], {"run_id": run_id}).fetchone()
    if run is None or run[2] not in ("in_progress", "paused"):
        return []
    rid, slug, status, still, remaining, total = run
    subject = f"run {rid}"
    base = {"run_id": rid, "flow": slug, "status": status}
    found: list[Finding] = []
    waiting = conn.execute(QUERIES["waiting_steps"], {"run_id": rid}).fetchall()
    if status == "paused":
        ready = [name for name, state, _, _ in waiting if state == "ready"]
        found.append(Finding(
            "run_paused", "info", subject,
            f"run {rid} ({slug}) is paused (for {seconds(still)}): "
            + (f"ready steps {', '.join(ready)} wait for its resume" if ready else
               "running steps finish, no new step starts"),
            f"swf-celery resume {rid}", {**base, "ready": ready}))
    tasks = conn.execute(QUERIES["open_tasks"], {"run_id": rid, "limit": TASK_LIMIT}).fetchall()
    since = sessions_since(conn)
    groups: dict[tuple[str, str], list[Finding]] = {}
    for task in tasks:
        finding = _explain_task(conn, subject, base, task, since, limits)
        groups.setdefault((task[0], finding.check), []).append(finding)
    for (step, _check), items in groups.items():
        first = items[0]
        if len(items) == 1:
            found.append(first)
            continue
        found.append(Finding(
            first.check, worst(items), first.subject,
            f"{len(items)} attempts of step {step}, e.g. {first.summary}", first.remedy,
            {**first.details, "count": len(items)}))
    if not tasks and status == "in_progress" and not any(s == "ready" for _, s, _, _ in waiting):
        found.append(Finding(
            "run_stranded", "error", subject,
            f"run {rid} ({slug}) is in progress with {remaining} of {total} steps left but "
            "no attempt queued or running: nothing will move it",
            f"retry it: swf-celery cancel {rid} then swf-celery retry {rid}",
            {**base, "remaining_steps": remaining, "waiting": [w[0] for w in waiting]}))
    found.sort(key=lambda f: -f.rank)
    return found


def _explain_task(conn: psycopg.Connection[Any], subject: str, base: dict[str, Any],
                  task: tuple[Any, ...], since: tuple[Any, Any], limits: Limits) -> Finding:
    (step, index, task_id, attempt, status, execution, msg_id, queue, task_name, error,
     due_in, running_for, overdue, worker) = task
    what = f"step {step}" + (f"[{index}]" if index else "") + f" attempt {attempt}"
    details = {**base, "step": step, "index": index, "task_id": task_id, "attempt": attempt,
               "task_status": status, "queue": queue, "task": task_name, "error": error,
               "worker": worker}

    def finding(check: str, severity: str, summary: str, remedy: str,
                **more: Any) -> Finding:
        return Finding(check, severity, subject, f"{what}: {summary}", remedy,
                       {**details, **more})

    if status == "paused":
        return finding("run_paused", "info", "waits for the run's resume",
                       f"swf-celery resume {base['run_id']}")
    if execution == "local":
        return finding("local_step", "warning",
                       "a local step: only the process that started the run executes it; "
                       f"it is {status}" + (f" since {seconds(running_for)}" if running_for
                                            else ""),
                       "keep the starting process running (Executor.execute), or cancel "
                       "and retry the run")
    if status == "queued" and due_in is not None and due_in > 0:
        return _retry_due(finding, error, due_in, task_name, queue)
    message = None
    if msg_id is not None and queue is not None:
        message = conn.execute(QUERIES["message"], {"queue": queue, "msg_id": msg_id}).fetchone()
    if message is None:
        return _without_message(conn, finding, status, queue, task_id, overdue)
    read_ct, vt, hidden_for, read_at = message
    held = hidden_for > 0 and read_ct > 0
    if held:
        gone = holder_gone(read_at, hidden_for, since, limits)
        where = f" on worker {worker}" if worker else ""
        if gone:
            return finding(
                "held_by_gone_worker", "warning",
                f"its message was delivered{where} and its worker is gone (killed: it no "
                f"longer extends it); invisible until {vt:%H:%M:%S} "
                f"({seconds(hidden_for)}), then delivered again",
                "nothing to do: it runs again then; a lower visibility_timeout brings it "
                "back sooner", vt=vt.isoformat(), read_ct=read_ct)
        if status == "started" and overdue is not None and overdue > 0:
            return finding("step_overdue", "warning",
                           f"running{where} {seconds(overdue)} past its timeout",
                           "a worker's sweep fails it (and revokes it) within a minute; "
                           "check that workers run (celery -A APP worker)")
        if status == "started":
            return finding("step_running", "info",
                           f"running{where} for {seconds(running_for)} (message invisible "
                           f"until {vt:%H:%M:%S})", "nothing to do: it is running",
                           vt=vt.isoformat())
        return finding("step_prefetched", "info",
                       f"its message is held by a worker (prefetched or waiting for its "
                       f"ETA) until {vt:%H:%M:%S}", "nothing to do", vt=vt.isoformat())
    if hidden_for > 0:
        return finding("step_delayed", "info",
                       f"its message is delayed until {vt:%H:%M:%S} (a countdown)",
                       "nothing to do", vt=vt.isoformat())
    idle = conn.execute(QUERIES["queue_idle"], {"queue": queue}).fetchone()
    idle_s = None if idle is None else idle[0]
    again = "delivered before and " if read_ct else ""
    if idle_s is None or idle_s > limits.consumer_gone_after:
        return finding("queue_consumers", "error",
                       f"its message is {again}waiting in queue {queue!r}, which no worker "
                       f"consumed for {seconds(idle_s)}",
                       f"start a worker for it: celery -A APP worker -Q {queue}")
    return finding("step_queued", "info",
                   f"its message is {again}waiting in queue {queue!r} for a free worker",
                   "nothing to do, or add workers for this queue")


def _retry_due(finding: Any, error: str | None, due_in: float, task_name: str | None,
               queue: str | None) -> Finding:
    when = f"the next attempt is due in {seconds(due_in)}"
    if error and UNREGISTERED in error:
        return finding("task_not_registered", "error",
                       f"the last attempt failed: {error}; {when}",
                       f"deploy workers for queue {queue} that import the module defining "
                       f"{task_name}")
    if error and error.startswith(DEAD_LETTERED):
        return finding("dead_lettered", "warning", f"the last attempt's {error[:200]}; {when}",
                       "read the dead letter in the console (the queue's page) and fix its "
                       "cause; max_deliveries bounds redeliveries")
    return finding("retry_due", "info",
                   f"{when} (last error: {(error or '?')[:200]})",
                   "nothing to do: it is retried then")


def _without_message(conn: psycopg.Connection[Any], finding: Any, status: str,
                     queue: str | None, task_id: str, overdue: float | None) -> Finding:
    dead = None
    if queue is not None:
        dead = conn.execute(QUERIES["dead_letter"], {"queue": queue,
                                                     "task_id": task_id}).fetchone()
    if dead is not None:
        reason, dead_at, read_ct = dead
        return finding("dead_lettered", "error",
                       f"its message was dead-lettered at {dead_at:%H:%M:%S} ({reason}, "
                       f"{read_ct} deliveries) and nothing will run it",
                       "requeue it from the console (the queue's dead letters) or cancel "
                       "and retry the run", reason=reason)
    if status == "started" and overdue is not None:
        if overdue > 0:
            return finding("step_overdue", "warning",
                           f"running without its message (acknowledged early) "
                           f"{seconds(overdue)} past its timeout",
                           "a worker's sweep fails it within a minute; check that workers "
                           "run")
        return finding("step_running", "info",
                       "running; its message is acknowledged already (task_acks_late off), "
                       "so if its worker dies only the step's timeout ends it",
                       "nothing to do; task_acks_late=True lets a killed worker's step run "
                       "again")
    if status == "started":
        return finding("step_unbounded", "warning",
                       "running; its message is acknowledged already (task_acks_late off) "
                       "and it has no timeout: if its worker died, nothing ends it",
                       "give the step a timeout, or use task_acks_late=True; if its worker "
                       "is gone, cancel and retry the run")
    return finding("message_missing", "error",
                   "its message is in no queue and not dead-lettered: nothing will run it",
                   "cancel and retry the run (swf-celery cancel, swf-celery retry); "
                   "task_acks_late=True keeps a killed worker's messages")
