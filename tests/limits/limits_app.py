"""Celery app of the flow-control tests: tasks record each start and end in ``task_runs``.

Environment: ``SWF_TEST_BROKER`` (swf:// URL of the test database). Imports only what the
README tells users to import. ``task_cls="swf_celery:Task"``: a second publish of an
idempotency key returns the first task. Tests make a client app per database with
:func:`make_app`; ``celery -A tests.limits.limits_app`` runs :data:`app`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
from celery import Celery

import swf_celery as swf
from swf_celery.db import normalize_dsn


def make_app(broker: str) -> Celery:
    """The test app on ``broker`` (a swf:// URL)."""
    app = Celery("limits_app", broker=broker, backend=broker, task_cls="swf_celery:Task",
                 set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": float(os.environ.get("SWF_TEST_VT", "30")),
            "polling_interval": 0.2},
        worker_send_task_events=False,
        swf_flow_limits={"tenant:*": {"concurrency": 2}},
    )

    def record_run(tag: str, phase: str) -> None:
        with psycopg.connect(normalize_dsn(broker), autocommit=True) as conn:
            conn.execute("INSERT INTO task_runs (tag, phase, pid) VALUES (%s, %s, %s)",
                         [tag, phase, os.getpid()])

    @app.task(name="record", shared=False)
    def record(tag: str) -> str:
        record_run(tag, "done")
        return tag

    @app.task(name="limited", rate_limit="20/s", shared=False)
    def limited(tag: str) -> str:
        """At most 20 a second across the cluster (Celery's own option)."""
        record_run(tag, "done")
        return tag

    @app.task(name="per_tenant", shared=False,
              swf_key=lambda tenant, tag, seconds=0.0: f"tenant:{tenant}")
    def per_tenant(tenant: str, tag: str, seconds: float = 0.0) -> str:
        """At most 2 at once per tenant (swf_flow_limits), tenants taking turns."""
        record_run(tag, "start")
        time.sleep(seconds)
        record_run(tag, "done")
        return tag

    @app.task(name="calls_api", bind=True, shared=False, max_retries=5, swf_key="api:partner")
    def calls_api(self: Any, tag: str) -> str:
        """The first call meets a 429 with Retry-After: 2: the key is held, the task retried."""
        with psycopg.connect(normalize_dsn(broker), autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM task_runs WHERE phase = '429'").fetchone()
        if row is not None and row[0] == 0:
            record_run(tag, "429")
            swf.hold_key("api:partner", until=2.0, reason="429 Retry-After: 2")
            raise self.retry(countdown=0)
        record_run(tag, "done")
        return tag

    return app


app = make_app(os.environ.get("SWF_TEST_BROKER", "swf://postgres@127.0.0.1:5432/postgres"))
