"""A user's Celery app as the README shows it: ``import swf_celery`` and plain Celery tasks.

Nothing here imports the workflow layer (no ``@swf_celery.step``): the step runner task
``swf_celery.step`` must be registered by ``import swf_celery`` alone. The workflow is the
seed's form, a class whose ``__workflow_steps__()`` lists plain tasks, in
:mod:`tests.workflows.plain_flows` (the caller's side).

Broker: the swf:// URL of ``$SWF_DATABASE_URL``. ``SWF_TEST_MAX_DELIVERIES`` sets the
transport's ``max_deliveries``, ``SWF_TEST_REPORT_RETRY`` how long a step report is
retried; the timeout sweeper runs every second.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

import swf_celery

# The swf:// URL of the test's database (postgresql://… with the scheme changed).
_where = os.environ.get("SWF_DATABASE_URL", "postgresql://localhost/unset").split("://", 1)[1]
app = Celery("plain_app", broker=f"swf://{_where}")
app.conf.update(
    task_acks_late=True, worker_prefetch_multiplier=4, worker_hijack_root_logger=False,
    broker_transport_options={
        "visibility_timeout": 30,
        "max_deliveries": int(os.environ.get("SWF_TEST_MAX_DELIVERIES", "10"))},
    swf_sweep_interval=1.0,
    swf_report_retry_seconds=float(os.environ.get("SWF_TEST_REPORT_RETRY", "30")))

assert swf_celery.__version__  # the one import a user makes


def _log(path: str, line: str) -> int:
    """Append ``line`` to ``path``; return how many lines the file has now."""
    with open(path, "a") as f:
        f.write(f"{line} {time.time():.6f} {os.getpid()}\n")
    return len(Path(path).read_text().splitlines())


@app.task
def fetch(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"n": inputs["run"]["n"], "worker": os.environ.get("WORKER_ROLE", "?")}


@app.task
def left(inputs: dict[str, Any]) -> int:
    return int(inputs["fetch"]["n"]) + 1


@app.task
def right(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"n": inputs["fetch"]["n"] * 2, "worker": os.environ.get("WORKER_ROLE", "?")}


@app.task
def join(inputs: dict[str, Any]) -> int:
    return int(inputs["left"]) + int(inputs["right"]["n"])


@app.task
def noop(inputs: dict[str, Any]) -> int:
    return len(inputs)


@app.task
def nul_output(inputs: dict[str, Any]) -> str:
    return "before\x00after"


@app.task
def slow(inputs: dict[str, Any]) -> str:
    """Logs start and end of each execution to ``run.log`` (start time, pid)."""
    _log(inputs["run"]["log"], "start")
    time.sleep(float(inputs["run"]["sleep"]))
    _log(inputs["run"]["log"], "end")
    return "slept"


@app.task
def boom_once(inputs: dict[str, Any]) -> str:
    """Fails on its first execution (counted in ``run.counter``, after ``run.boom_after``
    seconds), succeeds afterwards."""
    if _log(inputs["run"]["counter"], "boom") == 1:
        time.sleep(float(inputs["run"].get("boom_after", 0)))
        raise RuntimeError("first execution fails")
    return "fine"


@app.task
def stubborn(inputs: dict[str, Any]) -> str:
    """Ignores its soft time limit, so only the hard limit (or a revoke) stops it."""
    _log(inputs["run"]["log"], "start")
    for _ in range(600):
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            _log(inputs["run"]["log"], "soft limit ignored")
    return "never"


@app.task
def die(inputs: dict[str, Any]) -> str:
    """Kills the pool process running it: the message is given back and delivered again."""
    _log(inputs["run"]["log"], "dying")
    os._exit(1)
