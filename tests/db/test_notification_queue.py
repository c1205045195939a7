"""A listener that stops reading stalls nothing: workflows, the broker, results, messaging.

PostgreSQL keeps NOTIFYs in one queue per server and trims it only up to the slowest
listener; once it is full, every COMMIT that NOTIFYs fails. Here a real session LISTENs and
then sits in an open transaction (PostgreSQL delivers nothing to it, so the queue cannot be
trimmed past it), on a private server whose queue is PostgreSQL's smallest
(``max_notify_queue_pages = 64``, 512 kB; PostgreSQL 17 and later). Workflows with a
distributed and a local step run through it until their own events would fill the queue,
then PostgreSQL's own NOTIFY is refused (the queue is full), and workflows, broker
publishes and acks, results and channel messages still go through.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu import Connection

import swf_celery as swf
from swf_celery import db
from swf_celery.db.notifications import notification_health
from swf_celery.errors import NotificationQueueFull
from swf_celery.ops import migrate
from swf_celery.workflows.definition import WorkflowDef, build
from swf_celery.workflows.steps import parse_options
from tests.conftest import PrivateServer
from tests.helpers import free_port, queue_size, sql, sql_value, wait_until

pytestmark = [pytest.mark.db, pytest.mark.slow]

QUEUE = "notifyq"
#: A channel nobody here LISTENs to but the stalled session (PostgreSQL's own NOTIFYs).
FILLER = "swft_filler"


@pytest.fixture(scope="module")
def small_queue_url() -> Iterator[str]:
    """A migrated private server whose notification queue holds 512 kB."""
    home = tempfile.mkdtemp(prefix="swf-notify-pg-")
    server = PrivateServer(home, free_port())
    try:
        server.start()
        with psycopg.connect(server.url, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_settings "
                                "WHERE name = 'max_notify_queue_pages'").fetchone():
                pytest.skip("this PostgreSQL has no max_notify_queue_pages (before 17): its "
                            "notification queue is 8 GB, too big to fill in a test")
            conn.execute("ALTER SYSTEM SET max_notify_queue_pages = 64")
        server.restart()
        assert sql_value(server.url, "SHOW max_notify_queue_pages") == "64"
        migrate.migrate(server.url)
        yield server.url
    finally:
        try:
            server.remove()
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _app(url: str) -> Celery:
    app = Celery("notify_queue_tests", set_as_current=False)
    app.conf.update(broker_url=db.broker_url(url), result_backend=db.broker_url(url),
                    task_default_queue=QUEUE, task_acks_late=True,
                    worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)

    @app.task(name="notifyq.double", shared=False)
    def double(inputs: dict[str, Any]) -> int:
        return int(inputs["run"]["n"]) * 2

    @app.task(name="notifyq.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


def _flow(app: Celery) -> WorkflowDef:
    """``remote`` on a worker (QUEUE), then ``local`` in the caller's process."""

    def local(inputs: dict[str, Any]) -> int:
        return int(inputs["remote"]) + 1

    return build("notifyq.mixed", [
        ("remote", app.tasks["notifyq.double"], parse_options({"queue": QUEUE}, where="remote")),
        ("local", local, parse_options({"depends_on": ["remote"]}, where="local")),
    ])


def _usage(url: str) -> float:
    return float(sql_value(url, "SELECT pg_notification_queue_usage()"))


def _skipped(url: str) -> int:
    return int(sql_value(url, "SELECT swf.notify_skipped()"))


def _raw_notify(conn: psycopg.Connection[Any]) -> None:
    """One of PostgreSQL's own NOTIFYs (not the library's): ~8 kB, about a queue page."""
    conn.execute("SELECT pg_notify(%s, %s)", (FILLER, uuid.uuid4().hex + "x" * 7800))


def _run(flow: WorkflowDef, n: int, url: str, app: Celery) -> None:
    result = swf.Executor.execute(flow, {"n": n}, url, timeout=60_000, app=app)
    assert result.output == {"local": 2 * n + 1}


# A long fault cycle (make test-long, one process): under the parallel suite's load its
# in-process worker now and then never reports started (Celery's test worker waits for that
# without a limit), and the thread method of pytest-timeout, which ends the wait, takes the
# xdist worker process down with it.
@pytest.mark.long
@pytest.mark.timeout(240, method="thread")
def test_a_stalled_listener_fails_no_transition_publish_ack_or_result(
        small_queue_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = small_queue_url
    app = _app(url)
    flow = _flow(app)
    stalled = psycopg.connect(url)
    stalled.execute('LISTEN "swf_workflow_events"')
    stalled.execute(f"LISTEN {FILLER}")
    stalled.commit()
    stalled.execute("SELECT 1")  # idle in transaction from here on
    caplog.set_level(logging.WARNING, logger="swf_celery.db.notifications")
    try:
        with start_worker(app, concurrency=2, pool="threads", perform_ping_check=False,
                          loglevel="WARNING", shutdown_timeout=20), \
                psycopg.connect(url, autocommit=True) as filler:
            # Workflows run while the queue grows (PostgreSQL's NOTIFYs bring it near the
            # limit faster), until their own events would pass it: from then on they are
            # skipped, and the runs go on.
            while _usage(url) < 0.45:
                _raw_notify(filler)
            runs = 0
            while _skipped(url) == 0:
                _run(flow, runs, url, app)
                runs += 1
                assert runs < 200, "the engine's events never reached the queue's limit"
            _run(flow, runs, url, app)

            # Now the queue is full: PostgreSQL itself refuses a NOTIFY.
            with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="NOTIFY queue"):
                for _ in range(100):
                    _raw_notify(filler)
            with pytest.raises(NotificationQueueFull, match="stopped reading"):
                db.resolve(url).fetch_one("SELECT pg_notify('swft_filler', 'x')")

            skipped = _skipped(url)
            _run(flow, 100, url, app)  # transitions, dispatch (publish), acks
            assert _skipped(url) > skipped

            # A result stored and waited for (its wake-up is skipped: the waiter's listener
            # reports the skip as a gap and reads it).
            assert app.tasks["notifyq.add"].delay(2, 3).get(timeout=30) == 5

            # A plain broker publish and ack.
            with Connection(db.broker_url(url)) as conn:
                plain = conn.SimpleQueue("notifyq-plain")
                plain.put({"hello": "world"})
                message = plain.get(timeout=10)
                assert message.payload == {"hello": "world"}
                message.ack()
                plain.close()
            wait_until(lambda: queue_size(url, "notifyq-plain") == 0, 10, "the ack written")

            # A channel message is stored (its NOTIFY skipped: listeners get a gap and
            # re-read); a bare NOTIFY asked for by name is refused.
            with swf.listen("orders", url) as listener:
                message_id = swf.send_with_notify("orders", {"order": 1}, url)
                note = listener.get(30)
                assert note is not None and note.is_gap
                assert [m.id for m in swf.read_pending("orders", url)] == [message_id]
            with pytest.raises(NotificationQueueFull, match="notification queue is"):
                swf.notify_only("orders", "ping", url)

            with psycopg.connect(url, autocommit=True) as conn:
                health = notification_health(conn, stalled_after=0)
            assert health.skipping and health.usage >= health.limit == 0.5
            assert health.skipped == _skipped(url) > 0
            assert stalled.info.backend_pid in {s.pid for s in health.suspects}
            suspect = next(s for s in health.suspects if s.pid == stalled.info.backend_pid)
            assert suspect.state == "idle in transaction"
    finally:
        stalled.close()

    assert sql(url, "SELECT count(*) FROM swf.dead_letters") == [(0,)]
    assert sql(url, "SELECT status, count(*) FROM swf.runs GROUP BY status") == [
        ("completed", runs + 2)]
    assert queue_size(url, QUEUE) == 0
    # This process said that its NOTIFYs were skipped.
    assert any("skipped" in r.getMessage() for r in caplog.records
               if r.name == "swf_celery.db.notifications")

    # With the stalled session gone the queue is trimmed, and NOTIFYs flow again.
    wait_until(lambda: _usage(url) < 0.5, 30, "the queue trimmed")
    with swf.listen("orders", url) as listener:
        swf.notify_only("orders", "ping", url)
        note = listener.get(30)
        assert note is not None and note.payload == "ping"
