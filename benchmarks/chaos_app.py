"""The Celery app of `make chaos` (:mod:`benchmarks.chaos`): its workers run it as users do.

Broker and result backend: the ``swf://`` URL of ``$SWF_DATABASE_URL``. Late acks, a lost
child's task rejected back to its queue, a short visibility timeout (``$CHAOS_VT``) so that
a killed worker's messages come back within the run. Every task records its effect in
``chaos_effects`` under an id the driver chose (``key``), counting executions: an effect
missing at the end is a lost task, one counted twice ran twice. A task that cannot reach the
database to record it rejects its message back to the queue (it runs again later), as a
user's idempotent task would.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
from celery import Celery
from celery.exceptions import Reject

import swf_celery as swf
from swf_celery import db

URL = os.environ.get("SWF_DATABASE_URL", "postgresql://localhost/unset")
app = Celery("chaos", broker=db.broker_url(URL), backend=db.broker_url(URL))
app.conf.update(
    task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=2,
    # durable_publish: a publish returns once its WAL is flushed, so a task counted as
    # published survives the immediate shutdowns (crashes) the run injects. Off (the
    # default), a server crash may lose the last few hundred ms of publishes (documented).
    # CHAOS_HAND_OVER=1 runs the workers with the opt-in hand-over (transport option
    # ``hand_over``); unset, the transport's default.
    broker_transport_options={"visibility_timeout": float(os.environ.get("CHAOS_VT", "10")),
                              "durable_publish": True,
                              **({"hand_over": os.environ["CHAOS_HAND_OVER"] == "1"}
                                 if "CHAOS_HAND_OVER" in os.environ else {})},
    broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
    task_default_queue="chaos", result_expires=3600,
    # Ride out a database restart when publishing (a retry's new message, a chain's next
    # task): Celery's default gives up after about half a second.
    task_publish_retry_policy={"max_retries": 30, "interval_start": 0.5, "interval_step": 0.5,
                               "interval_max": 2})

EFFECTS_TABLE = """
CREATE TABLE IF NOT EXISTS chaos_effects (
    key   text PRIMARY KEY,
    runs  integer NOT NULL,
    first timestamptz NOT NULL DEFAULT clock_timestamp()
)"""
RECORD = ("INSERT INTO chaos_effects AS e (key, runs) VALUES (%s, 1) "
          "ON CONFLICT (key) DO UPDATE SET runs = e.runs + 1 RETURNING runs")
_local = threading.local()


def record(key: str) -> int:
    """Count one execution of ``key``; returns how many so far. On a database error the
    message goes back to its queue (Reject, requeue) and the task runs again later."""
    try:
        conn = getattr(_local, "conn", None)
        if conn is None or conn.closed:
            conn = _local.conn = psycopg.connect(URL, autocommit=True, connect_timeout=5)
        return int(conn.execute(RECORD, (key,)).fetchone()[0])  # type: ignore[index]
    except psycopg.Error as exc:
        _local.conn = None
        raise Reject(f"cannot record {key}: {exc}", requeue=True) from exc


@app.task(name="chaos.effect")
def effect(key: str) -> str:
    record(key)
    return key


@app.task(name="chaos.flaky", bind=True, max_retries=5)
def flaky(self: Any, key: str) -> str:
    """Fails its first attempt (a retry with a countdown), records on the second."""
    if self.request.retries == 0:
        raise self.retry(countdown=1)
    record(key)
    return key


@app.task(name="chaos.chord_done")
def chord_done(results: list[Any], key: str) -> int:
    record(key)
    return len(results)


@app.task(name="chaos.fan")
def fan(inputs: dict[str, Any]) -> list[int]:
    return list(range(inputs["run"]["items"]))


@app.task(name="chaos.square")
def square(inputs: dict[str, Any]) -> int:
    time.sleep(0.2)  # a run lasts long enough to be paused or cancelled while it runs
    return int(inputs["item"]) ** 2


@app.task(name="chaos.wobbly")
def wobbly(inputs: dict[str, Any]) -> int:
    """Fails its step's first attempt (counted by effect), then adds the squares up."""
    if inputs["run"].get("wobbly") and record(f"wobbly:{inputs['run']['tag']}") == 1:
        raise RuntimeError("first attempt fails on purpose")
    return sum(inputs["square"])


class ChaosFlow:
    """fan -> square (a map step over fan's list) -> wobbly (retried once when asked)."""

    fan = swf.step(queue="chaos_steps")(fan)
    square = swf.step(depends_on=["fan"], map_over="fan", queue="chaos_steps")(square)
    wobbly = swf.step(depends_on=["square"], queue="chaos_steps", max_attempts=3,
                      retry_delay=1)(wobbly)
