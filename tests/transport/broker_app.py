"""Celery app for the broker tests: tasks record each run in the test database.

Environment: ``SWF_TEST_BROKER`` (swf:// URL of the test database), ``SWF_TEST_VT``
(visibility timeout, seconds), ``SWF_TEST_POLL`` and ``SWF_TEST_SWEEP`` (the polling
fallback and the sweep, seconds), ``SWF_TEST_HAND_OVER=true`` (the transport option
``hand_over``), ``SWF_TEST_REMOTE_CONTROL=0`` (a worker that takes no
broadcasts). Runs land in table ``task_runs`` so that a test can count
how often a task ran without any result backend.
"""

from __future__ import annotations

import os
import time

import psycopg
from celery import Celery

import swf_celery  # noqa: F401 - registers swf://
from swf_celery.db import normalize_dsn

BROKER = os.environ.get("SWF_TEST_BROKER", "swf://postgres@127.0.0.1:5432/postgres")

app = Celery("broker_app", broker=BROKER)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("SWF_TEST_VT", "60")),
        "polling_interval": float(os.environ.get("SWF_TEST_POLL", "1")),
        "sweep_interval": float(os.environ.get("SWF_TEST_SWEEP", "30")),
        "event_loop": os.environ.get("SWF_TEST_EVENT_LOOP", "true"),
        "hand_over": os.environ.get("SWF_TEST_HAND_OVER", "false"),
    },
    worker_send_task_events=False,
    worker_enable_remote_control=os.environ.get("SWF_TEST_REMOTE_CONTROL", "1") != "0",
)


def _record(tag: str, phase: str) -> None:
    with psycopg.connect(normalize_dsn(BROKER), autocommit=True) as conn:
        conn.execute("INSERT INTO task_runs (tag, phase, pid) VALUES (%s, %s, %s)",
                     [tag, phase, os.getpid()])


@app.task(name="record")
def record(tag: str) -> str:
    _record(tag, "done")
    return tag


@app.task(name="slow")
def slow(tag: str, seconds: float) -> str:
    _record(tag, "start")
    time.sleep(seconds)
    _record(tag, "done")
    return tag
