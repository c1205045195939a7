"""The console's flow keys page: limited queues' keys with their limits, held keys, release."""

from __future__ import annotations

import re

import pytest
from psycopg.types.json import Jsonb

import swf_celery as swf
from tests.helpers import kombu_message, sql

pytestmark = pytest.mark.db


def test_the_keys_page_lists_limits_and_held_keys_and_releases(db_url: str) -> None:
    pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx (test extra)")
    from starlette.testclient import TestClient

    from swf_celery.ui import create_app

    for i, flow in enumerate([{"key": "tenant:a", "concurrency": 3}] * 2
                             + [{"key": "api:b", "rate": 50}]):
        message = kombu_message(f"t-{i}")
        message["headers"]["swf_flow"] = flow
        sql(db_url, "SELECT swf.queue_send('jobs', %s)", (Jsonb(message),))
    swf.hold_key("api:b", until=60, reason="429 Retry-After: 60", repo=db_url)
    app = create_app(db_url, allowed_hosts=["testserver"], require_token=False)
    with TestClient(app, follow_redirects=False) as client:
        page = client.get("/keys").text
        assert "<code>tenant:a</code>" in page and "3 at once" in page and "50/s" in page
        assert "429 Retry-After: 60" in page
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        assert csrf is not None
        reply = client.post("/keys/api:b/release", data={"csrf": csrf.group(1)})
        assert reply.status_code == 303 and "released" in reply.headers["location"]
    assert swf.held_keys(db_url) == []
