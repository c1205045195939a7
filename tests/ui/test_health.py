"""The console's health page and a stuck run's explanation: the doctor's findings, with
their remedies, on a real database (no worker: the run's queue has none)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from swf_celery.db import resolve
from swf_celery.workflows import coordinator, definition, steps
from tests.helpers import pg_url, sql

pytestmark = pytest.mark.db


def test_health_page_shows_an_idle_transaction_and_its_remedy(client: Any,
                                                              console_db: str) -> None:
    with psycopg.connect(pg_url(console_db), autocommit=True,
                         application_name="health-page-test") as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT txid_current()")
        pid = conn.info.backend_pid
        time.sleep(1.2)
        page = client.get("/health?stalled_after=1")
        conn.execute("ROLLBACK")
    assert page.status_code == 200
    assert "vacuum_horizon" in page.text and "health-page-test" in page.text
    assert f"pg_terminate_backend({pid})" in page.text
    assert 'class="badge state-error">error<' in page.text
    assert client.get("/health?stalled_after=soon").status_code == 400


def test_a_stuck_run_page_says_why(client: Any, console_db: str) -> None:
    from tests.workflows import engine_app

    wf = definition.build("health.stuck", [(
        "work", engine_app.noop,
        steps.parse_options({"queue": "health_nobody"}, where="test"))])
    run_id = str(coordinator.start_run(resolve(console_db), wf, {}))
    # as ten minutes later: no consumer marked the queue since it was declared
    sql(console_db, "UPDATE swf.queues SET last_active = now() - interval '10 minutes' "
                    "WHERE name = 'health_nobody'")
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200
    assert "why it is not moving" in page.text
    assert "waiting in queue &#x27;health_nobody&#x27;, which no worker consumed for 10 min" \
        in page.text
    assert "celery -A APP worker -Q health_nobody" in page.text
