"""Result waiters are woken only for their own results, and an idle process that waited once
collects no notifications (and its listener reads whatever arrives): PostgreSQL's
notification queue stays empty."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.helpers import sql, sql_value, wait_until
from tests.results.backend_app import make_app

pytestmark = pytest.mark.slow
IDLE_PROCESSES = 50
RESULTS = 20_000


def _idle_waiter(db_url: str, queue: str, conn: Any) -> None:
    """Wait for one result with ``.get()``, go idle, then report what reached the socket."""
    app = make_app(db_url, queue)
    consumer = app.backend.result_consumer
    task_id = f"idle-{uuid.uuid4()}"

    def store_once_waiting() -> None:
        # Stored only once get() listens, so the process really waited on NOTIFY.
        deadline = time.monotonic() + 60
        while not consumer._listening and time.monotonic() < deadline:
            time.sleep(0.01)
        app.backend.store_result(task_id, 42, "SUCCESS")

    threading.Thread(target=store_once_waiting, daemon=True).start()
    value = app.AsyncResult(task_id).get(timeout=60)
    listened = bool(consumer._listening)
    # What stays open in an idle process is its listening connection; the pool's one is
    # closed so that 50 processes fit a server's default max_connections of 100.
    app.backend.db.close()
    listener = consumer._listener
    # The NOTIFY of the result just collected may still be on its way (get() can return on
    # its read before the NOTIFY is read): let it arrive before counting.
    time.sleep(0.5)
    before = listener.received if listener is not None else 0
    conn.send(("waited", value, listened))
    conn.recv()  # idle until the results are stored
    time.sleep(1.0)  # any notification for this process arrives meanwhile
    received = (listener.received if listener is not None else 0) - before
    conn.send(("received", received))


def _trimmed(db_url: str) -> bool:
    """Whether the notification queue is (nearly) empty; if not, write a few pages of
    notifications that nobody listens for, so that PostgreSQL trims it again.

    PostgreSQL trims the queue only at a commit whose notifications cross a 4-page
    boundary, and only up to the slowest listener at that moment; listeners in other
    databases (other tests' workers) are woken only once they are 4 pages behind. The
    last trim of a run can so leave pages that every listener has read. A listener that
    really holds the queue (one that stopped reading) keeps it full however much is
    written after it.
    """
    if float(sql_value(db_url, "SELECT pg_notification_queue_usage()")) < 1e-5:
        return True
    for _ in range(5):  # 5 x 7 kB: past a 4-page (32 kB) boundary
        sql(db_url, "SELECT pg_notify('swft_filler', repeat('x', 7000))")
    return False


def test_idle_processes_that_waited_once_collect_no_notifications(db_url: str) -> None:
    queue = f"waiters-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for _ in range(IDLE_PROCESSES):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_idle_waiter, args=(db_url, queue, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for parent in pipes:
            assert parent.poll(120), "an idle waiter never reported"
            kind, value, listened = parent.recv()
            assert (kind, value, listened) == ("waited", 42, True)

        app = make_app(db_url, queue)
        usage: list[float] = []
        storing = threading.Event()

        def sample() -> None:
            while not storing.is_set():
                usage.append(float(sql_value(db_url, "SELECT pg_notification_queue_usage()")))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def store(chunk: int) -> None:
            for i in range(RESULTS // 4):
                app.backend.store_result(f"bulk-{chunk}-{i}", i, "SUCCESS")

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(store, range(4)))
        storing.set()
        sampler.join()
        usage.append(float(sql_value(db_url, "SELECT pg_notification_queue_usage()")))

        for parent in pipes:
            parent.send("report")
        for parent in pipes:
            assert parent.poll(60), "an idle waiter never reported"
            assert parent.recv() == ("received", 0)
        # 20,000 notifications would fill ~1.3 MB of the 8 GB queue (1.6e-4) if nothing were
        # trimmed; every listener keeps up, so the queue is trimmed as it goes.
        assert max(usage) < 1e-4, usage
        wait_until(lambda: _trimmed(db_url), what="notification queue trimmed", interval=0.2)
        app.backend.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.join(10)


def test_sequential_round_trips_never_miss_a_wake_up(celery_app: Any, worker: Any) -> None:
    # Each get() LISTENs on its result's channel (pipelined with a read) and UNLISTENs the
    # previous one: a NOTIFY parsed while that pipeline's results are read must still wake it.
    noop = celery_app.tasks["t.noop"]
    for _ in range(300):
        assert noop.delay().get(timeout=20) is None
