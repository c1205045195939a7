"""A read-only console writes nothing: its sessions cannot write, and it asks no worker
anything (no ``inspect`` broadcast, no reply queue)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import swf_celery as swf
from swf_celery.errors import SwfError
from tests.helpers import sql_value
from tests.ui.console_app import IDLE_QUEUE, Held

pytestmark = pytest.mark.slow

#: The pidbox queue of a worker that does not exist: broadcasts land in it, unread.
NODE = "nobody@console-tests"


def _console(console_db: str, *, read_only: bool, celery_app: Any = None) -> Any:
    from swf_celery.ui import create_app

    return create_app(console_db, allowed_hosts=["testserver"], require_token=False,
                      read_only=read_only, celery_app=celery_app)


@pytest.fixture
def read_only(console_db: str) -> Iterator[Any]:
    from starlette.testclient import TestClient

    with TestClient(_console(console_db, read_only=True), follow_redirects=False) as tc:
        yield tc


def test_every_page_reads_through_a_session_that_cannot_write(read_only: Any,
                                                              console_db: str) -> None:
    run_id = swf.Executor.start(Held, {"n": 1}, console_db)
    graph = swf.Orchestrator.decompose_goal("read <only>", lambda goal: [{"id": "a"}],
                                            console_db)
    for path in ("/", f"/runs/{run_id}", f"/runs/{run_id}?step=hold", "/queues",
                 "/queues?all=1", f"/queues/{IDLE_QUEUE}", "/flows", "/flows/held", "/goals",
                 f"/goals/{graph['id']}"):
        assert read_only.get(path).status_code == 200, path
    metrics = read_only.get("/metrics").text
    assert "swf_console_scrape_errors_total 0.0" in metrics and "swf_runs{" in metrics

    db = read_only.app.state.console.db
    with db.connection() as conn:
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
    # Writes through the console's own sessions fail, in plain SQL and in stored functions.
    with pytest.raises(SwfError, match="read-only transaction"):
        swf.pause_workflow_run(run_id, db)
    with pytest.raises(SwfError, match="read-only transaction"), db.connection() as conn:
        conn.execute("DELETE FROM swf.runs WHERE id = %s", (run_id,))
    assert swf.get_run_status(run_id, console_db).status == "in_progress"
    swf.cancel_workflow_run(run_id, console_db)


def test_live_updates_listen_on_a_read_only_session(read_only: Any, console_db: str) -> None:
    hub = read_only.app.state.console.hub
    run_id = swf.Executor.start(Held, {}, console_db)

    async def first_event() -> dict[str, Any]:
        async with hub.subscribe() as events:
            await asyncio.to_thread(swf.pause_workflow_run, run_id, console_db)
            while True:
                event = await asyncio.wait_for(events.get(), timeout=30)
                if event.get("run_id") == run_id:
                    return event

    try:
        assert asyncio.run(first_event())["status"] == "paused"
    finally:
        asyncio.run(hub.close())
        swf.cancel_workflow_run(run_id, console_db)


def _broadcasts(console_db: str) -> int:
    return int(sql_value(console_db, "SELECT count(*) FROM swf.transient_messages "
                                     "WHERE queue = %s", (f"{NODE}.celery.pidbox",)))


def _reply_queues(console_db: str) -> int:
    return int(sql_value(console_db, "SELECT count(*) FROM swf.queues "
                                     "WHERE name LIKE '%%.reply.celery.pidbox'"))


def test_queues_page_sends_no_broadcast_when_read_only(console_db: str,
                                                       celery_app: Any) -> None:
    from starlette.testclient import TestClient

    # A worker's remote-control queue, bound to the broadcast exchange as a worker binds it.
    with celery_app.connection_for_write() as conn:
        celery_app.control.mailbox.get_queue(NODE)(conn.default_channel).declare()
    replies = _reply_queues(console_db)

    with TestClient(_console(console_db, read_only=True, celery_app=celery_app)) as ro:
        page = ro.get("/queues").text
        assert "asks no worker anything" in page
    assert _broadcasts(console_db) == 0 and _reply_queues(console_db) == replies

    # The same page on a console that may write asks the workers: the broadcast lands.
    with TestClient(_console(console_db, read_only=False, celery_app=celery_app)) as rw:
        rw.get("/queues")
    assert _broadcasts(console_db) == 1
