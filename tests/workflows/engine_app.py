"""A Celery app with workflow steps, for the engine tests' `celery worker` subprocesses.

Broker: the swf:// URL of ``$SWF_DATABASE_URL`` (the test's database). Each worker gets
``WORKER_ROLE`` so a step can report which worker ran it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery, shared_task

import swf_celery as swf
from swf_celery import db

_url = os.environ.get("SWF_DATABASE_URL", "postgresql://localhost/unset")
app = Celery("engine_app", broker=db.broker_url(_url))
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=4,
                broker_transport_options={
                    "visibility_timeout": float(os.environ.get("SWF_TEST_VT", "30"))},
                worker_hijack_root_logger=False,
                swf_resource_queues={"gpu": "gpu_workers"})


def _role() -> str:
    return os.environ.get("WORKER_ROLE", "?")


def _bump(path: str) -> int:
    """Append one line to ``path`` and return how many lines it has (attempt counter)."""
    with open(path, "a") as f:
        f.write("x\n")
    return len(Path(path).read_text().splitlines())


@swf.step(queue="cpu_workers")
@app.task
def fetch(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"n": inputs["run"]["n"], "role": _role()}


@swf.step(depends_on=["fetch"], queue="cpu_workers")
@app.task
def left(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"n": inputs["fetch"]["n"] + 1, "role": _role()}


@swf.step(depends_on=["fetch"], resources={"gpu": True})
@app.task
def right(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"n": inputs["fetch"]["n"] * 2, "role": _role()}


@app.task
@swf.step(depends_on=["left", "right"], queue="gpu_workers")  # the other decorator order
def join(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"n": inputs["left"]["n"] + inputs["right"]["n"],
            "roles": {"left": inputs["left"]["role"], "right": inputs["right"]["role"],
                      "join": _role()}}


class DiamondFlow:
    fetch = fetch
    left = left
    right = right
    join = join


@app.task
def noop(inputs: dict[str, Any]) -> int:
    return len(inputs)


@app.task
def flaky(inputs: dict[str, Any]) -> str:
    attempt = _bump(inputs["run"]["counter"])
    if attempt < 3:
        raise RuntimeError(f"attempt {attempt} fails")
    return f"ok after {attempt}"


@app.task
def sleepy(inputs: dict[str, Any]) -> str:
    attempt = _bump(inputs["run"]["counter"])
    if attempt == 1:
        time.sleep(inputs["run"]["sleep"])
    return f"attempt {attempt}"


@app.task
def items(inputs: dict[str, Any]) -> list[int]:
    return list(range(inputs["run"]["count"]))


@app.task
def square(inputs: dict[str, Any]) -> int:
    return inputs["item"] * inputs["item"]


@app.task
def record(inputs: dict[str, Any]) -> str:
    _bump(inputs["run"]["counter"])
    return "recorded"


@swf.step(depends_on=["fetch"], queue="cpu_workers")
@shared_task
def shared_double(inputs: dict[str, Any]) -> int:
    return inputs["fetch"]["n"] * 2


@shared_task
@swf.step(depends_on=["shared_double"], queue="gpu_workers")
def shared_inc(inputs: dict[str, Any]) -> int:
    return inputs["shared_double"] + 1


class SharedFlow:
    fetch = fetch
    shared_double = shared_double
    shared_inc = shared_inc


@app.task
def nap(seconds: float) -> str:
    """A plain Celery task (no workflow) that sleeps, for canvas cancellation."""
    time.sleep(seconds)
    return "rested"


@app.task
def touch(path: str) -> None:
    Path(path).write_text("ran")
