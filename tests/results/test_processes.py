"""The swf result backend with a real ``celery worker`` process, and across a restart."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from celery import chord, group
from celery.contrib.testing.worker import start_worker

from swf_celery.results.consumer import APPLICATION_NAME
from tests.helpers import connections_named, read_log, wait_until, worker_process
from tests.results.backend_app import make_app

pytestmark = pytest.mark.slow


def test_prefork_worker_process(db_url):
    queue = f"backend-proc-{uuid.uuid4().hex[:8]}"
    app = make_app(db_url, queue)
    t = app.tasks
    env = {"SWF_TEST_DATABASE_URL": db_url, "SWF_TEST_QUEUE": queue}
    with worker_process("tests.results.backend_app", queues=[queue], env=env,
                        concurrency=2) as proc:
        try:
            assert t["t.add"].delay(20, 22).get(timeout=30) == 42
            assert group(t["t.add"].s(i, 1) for i in range(30))().get(timeout=30) == \
                [i + 1 for i in range(30)]
            assert chord([t["t.add"].s(i, i) for i in range(25)], t["t.tsum"].s())() \
                .get(timeout=30) == sum(2 * i for i in range(25))
            with pytest.raises(ValueError, match="in a process"):
                t["t.fail"].delay("in a process").get(timeout=30)
        except Exception:
            print(read_log(proc)[-4000:])
            raise
        finally:
            app.backend.close()
        assert "chord_unlock" not in read_log(proc)


def test_get_returns_after_database_restart(private_server, tmp_path):
    app = make_app(private_server.url, f"backend-restart-{uuid.uuid4().hex[:8]}")
    flag = tmp_path / "go"
    outcome: dict[str, Any] = {}

    with start_worker(app, concurrency=2, pool="threads", perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=20):
        result = app.tasks["t.wait_for_file"].delay(str(flag), "after restart")

        def wait() -> None:
            try:
                outcome["value"] = result.get(timeout=90)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = exc

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        wait_until(lambda: result.state == "STARTED", what="task started")
        wait_until(lambda: connections_named(private_server.url, APPLICATION_NAME) > 0,
                   what="listener connected")
        private_server.restart()
        flag.touch()  # the task finishes and stores its result after the restart
        waiter.join(90)
        app.backend.close()
    assert outcome == {"value": "after restart"}
