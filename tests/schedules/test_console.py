"""The console's schedule page: next run, last run with its task id and state, and
pause/resume through the console's CSRF-checked forms."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg.types.json import Jsonb

import swf_celery as swf
from tests.helpers import sql

pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx (test extra)")
pytestmark = pytest.mark.db


@pytest.fixture
def client(db_url: str) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from swf_celery.ui import create_app

    app = create_app(db_url, allowed_hosts=["testserver"], require_token=False)
    with TestClient(app, follow_redirects=False) as tc:
        yield tc


def test_the_schedule_page_shows_each_entry_and_pauses_and_resumes_it(
        client: Any, db_url: str) -> None:
    swf.schedules.add("nightly <report>", task="app.report", schedule="0 3 * * *",
                      repo=db_url)
    entry_id = sql(db_url, "SELECT id FROM swf.schedules")[0][0]
    sql(db_url, "SELECT swf.schedule_fired(%s, %s, 'host:1', now() + interval '1 day')",
        (entry_id, Jsonb([{"tick_at": "2026-01-01T03:00:00+00:00", "outcome": "sent",
                           "task_id": "t-123"}])))
    page = client.get("/schedules").text
    assert "nightly &lt;report&gt;" in page and "<code>0 3 * * *</code>" in page
    assert "<code>t-123</code>" in page and "state-PENDING" in page
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)  # type: ignore[union-attr]
    assert client.post("/schedules/nightly%20%3Creport%3E/pause",
                       data={"csrf": "0" * 64}).status_code == 403
    reply = client.post("/schedules/nightly%20%3Creport%3E/pause", data={"csrf": token})
    assert reply.status_code == 303
    assert swf.schedules.get("nightly <report>", db_url).paused
    assert ">resume</button>" in client.get("/schedules").text
    client.post("/schedules/nightly%20%3Creport%3E/resume", data={"csrf": token})
    assert not swf.schedules.get("nightly <report>", db_url).paused
