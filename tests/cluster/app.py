"""A Celery app as a user writes it, for workers on many hosts: broker and result backend
are the swf:// URL of ``$SWF_CLUSTER_URL``; its tasks sleep (I/O-bound) and record their
effect once per task id in ``cluster_effects`` (idempotent by id)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from celery import Celery

import swf_celery as swf
from swf_celery import db
from swf_celery.errors import DatabaseUnavailable

QUEUE = "cluster_q"
_url = db.broker_url(os.environ.get("SWF_CLUSTER_URL", "postgresql://unset@127.0.0.1:1/unset"))
#: Set for the comparison runs: the same app on Redis (broker and result backend).
_redis = os.environ.get("SWF_CLUSTER_REDIS")
app = Celery("cluster_app", broker=_redis or _url, backend=_redis or _url)
app.conf.update(task_acks_late=True, task_default_queue=QUEUE, worker_hijack_root_logger=False,
                worker_prefetch_multiplier=1)
app.conf.broker_transport_options = {
    "visibility_timeout": float(os.environ.get("SWF_CLUSTER_VT", "60")),
    "durable_publish": os.environ.get("SWF_CLUSTER_DURABLE") == "1"}
if os.environ.get("SWF_CLUSTER_DURABLE") == "1":
    app.conf.result_backend_transport_options = {"synchronous_commit": "on"}


def _record(key: str) -> None:
    """The task's effect, once per task id; every execution is counted beside it."""
    with db.resolve(_url, role="steps").connection() as conn:
        conn.execute("INSERT INTO cluster_runs (key, host) VALUES (%s, %s)",
                     (key, socket.gethostname()))
        conn.execute("INSERT INTO cluster_effects (key, host) VALUES (%s, %s) "
                     "ON CONFLICT (key) DO NOTHING", (key, socket.gethostname()))


@app.task(bind=True)
def nap(self: Any, seconds: float) -> str:
    """Sleep ``seconds`` (an I/O wait) and return the host that ran it."""
    time.sleep(seconds)
    return socket.gethostname()


@app.task
def timed_nap(seconds: float) -> list[Any]:
    """Sleep ``seconds``; return [host, start, end] (wall-clock seconds)."""
    start = time.time()
    time.sleep(seconds)
    return [socket.gethostname(), start, time.time()]


@swf.step()
@app.task
def tick(inputs: Any = None) -> int:
    """A no-op step of the large DAG (its queue: the app's default)."""
    return 0


# A database failover interrupts the task's own statements: retried, as users would.
@app.task(bind=True, autoretry_for=(DatabaseUnavailable,),
          retry_kwargs={"max_retries": 20, "countdown": 1})
def effect(self: Any, seconds: float) -> str:
    """Note the start, sleep, then record this task's effect once (keyed by task id)."""
    with db.resolve(_url, role="steps").connection() as conn:
        conn.execute("INSERT INTO cluster_starts (key, host) VALUES (%s, %s)",
                     (self.request.id, socket.gethostname()))
    time.sleep(seconds)
    _record(self.request.id)
    return socket.gethostname()


@swf.step(queue=QUEUE)
@app.task
def start(inputs: dict[str, Any]) -> int:
    return int(inputs["run"]["n"])


@swf.step(depends_on=["start"], queue=QUEUE)
@app.task
def middle(inputs: dict[str, Any]) -> int:
    time.sleep(0.05)
    return inputs["start"] + 1


@swf.step(depends_on=["middle"], queue=QUEUE)
@app.task
def finish(inputs: dict[str, Any]) -> int:
    return inputs["middle"] * 2


class Chain3:
    """start -> middle -> finish on the cluster queue."""

    start = start
    middle = middle
    finish = finish


@swf.step(queue=QUEUE)
@app.task
def slow(inputs: dict[str, Any]) -> int:
    time.sleep(2.0)
    return 1


@swf.step(queue=QUEUE)
@app.task
def total(inputs: dict[str, Any]) -> int:
    return sum(v for k, v in inputs.items() if k != "run")


class Fan:
    """8 parallel 2-second steps, then their total."""

    __workflow_slug__ = "cluster.fan"

    @staticmethod
    def __workflow_steps__() -> list[Any]:
        entries: list[Any] = [(f"s{i}", slow, {}) for i in range(8)]
        entries.append(("total", total, {"depends_on": [f"s{i}" for i in range(8)]}))
        return entries
