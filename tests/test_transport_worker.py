"""Real `celery worker` subprocesses on the swf:// broker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery
from psycopg.types.json import Jsonb

import swf_celery  # noqa: F401 - registers swf://
from tests.celery_worker import ROOT, kill_worker, read_log, worker_process
from tests.test_transport_sql import kombu_message

pytestmark = pytest.mark.slow
APP = "tests.apps.broker_app"


@pytest.fixture
def broker(db_url: str) -> Iterator[str]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE task_runs (id bigserial PRIMARY KEY, tag text, phase text, "
                     "pid integer, at timestamptz DEFAULT clock_timestamp())")
    yield db_url.replace("postgresql://", "swf://", 1)


@pytest.fixture
def client(broker: str) -> Iterator[Celery]:
    app = Celery("client", broker=broker, set_as_current=False)
    app.conf.broker_transport_options = {"visibility_timeout": 60}
    yield app
    app.close()


def runs(broker: str, tag: str | None = None) -> list[tuple[str, str]]:
    with psycopg.connect(broker.replace("swf://", "postgresql://"), autocommit=True) as conn:
        rows = conn.execute("SELECT tag, phase FROM task_runs ORDER BY id").fetchall()
    return [r for r in rows if tag is None or r[0] == tag]


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "",
             proc: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    log = read_log(proc)[-3000:] if proc is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")


@contextlib.contextmanager
def worker(app: str, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A worker stopped with SIGTERM to its main process only: a TERM to the whole process
    group kills idle pool children holding billiard's queue lock and the parent then hangs
    at exit until the launcher's KILL."""
    with worker_process(app, **kwargs) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(20)


def env(broker: str, **extra: str) -> dict[str, str]:
    return {"SWF_TEST_BROKER": broker, **extra}


def test_worker_consumes_only_its_queue_and_sql_enqueued_messages(
        broker: str, client: Celery) -> None:
    client.send_task("record", args=["default"])  # queue "celery": nobody consumes it
    with worker(APP, queues=["gpu_workers"], env=env(broker)) as proc:
        client.send_task("record", args=["gpu"], queue="gpu_workers")
        # The workflow engine's path: a message enqueued in SQL inside its own transaction.
        msg = kombu_message("sql-task", queue="gpu_workers")
        msg["headers"]["task"] = "record"
        msg["body"] = '[["from-sql"], {}, {"callbacks": null, "errbacks": null, ' \
                      '"chain": null, "chord": null}]'
        with psycopg.connect(broker.replace("swf://", "postgresql://")) as conn:
            conn.execute("SELECT swf.queue_send('gpu_workers', %s)", [Jsonb(msg)])
        wait_for(lambda: len(runs(broker)) >= 2, what="two tasks", proc=proc)
        time.sleep(0.5)
    assert sorted(runs(broker)) == [("from-sql", "done"), ("gpu", "done")]
    with psycopg.connect(broker.replace("swf://", "postgresql://")) as conn:
        assert conn.execute("SELECT swf.queue_size('celery')").fetchone()[0] == 1


def _celery_cli(broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, SWF_TEST_BROKER=broker, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "celery", "-A", APP, *args], env=full_env,
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT))


def test_inspect_control_revoke_and_shutdown(broker: str, client: Celery) -> None:
    with worker(APP, queues=["gpu_workers"], env=env(broker),
                        hostname="gpu1@testhost") as proc:
        ping = _celery_cli(broker, "inspect", "ping", "--timeout", "5")
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
        queues = client.control.inspect(timeout=5).active_queues()
        assert [q["name"] for q in queues["gpu1@testhost"]] == ["gpu_workers"]

        # A task waiting for its countdown in PostgreSQL; revoke deletes its message.
        result = client.send_task("record", args=["revoked"], queue="gpu_workers",
                                  countdown=3600)
        with psycopg.connect(broker.replace("swf://", "postgresql://")) as conn:
            assert conn.execute("SELECT swf.queue_size('gpu_workers')").fetchone()[0] == 1
            revoke = _celery_cli(broker, "control", "revoke", result.id)
            assert revoke.returncode == 0, revoke.stderr
            assert conn.execute("SELECT swf.queue_size('gpu_workers')").fetchone()[0] == 0

        client.control.shutdown(destination=["gpu1@testhost"])
        proc.wait(30)
        assert proc.returncode == 0, read_log(proc)[-3000:]


def test_sigkilled_worker_loses_nothing(broker: str, client: Celery) -> None:
    vt = env(broker, SWF_TEST_VT="2")
    with worker(APP, queues=["celery"], env=vt) as first:
        client.send_task("slow", args=["crash", 2.0])
        wait_for(lambda: runs(broker, "crash"), what="task start", proc=first)
        kill_worker(first)
    assert runs(broker, "crash") == [("crash", "start")]
    with worker(APP, queues=["celery"], env=vt) as second:
        wait_for(lambda: ("crash", "done") in runs(broker, "crash"), timeout=40,
                 what="task rerun", proc=second)
    assert runs(broker, "crash") == [("crash", "start"), ("crash", "start"), ("crash", "done")]


def test_long_task_is_not_delivered_twice(broker: str, client: Celery) -> None:
    # A task 4x longer than the visibility timeout, with another idle worker ready to steal it.
    vt = env(broker, SWF_TEST_VT="1")
    with worker(APP, queues=["celery"], env=vt, hostname="a@test") as a, \
            worker(APP, queues=["celery"], env=vt, hostname="b@test"):
        client.send_task("slow", args=["long", 4.0])
        wait_for(lambda: ("long", "done") in runs(broker, "long"), timeout=40,
                 what="long task", proc=a)
        time.sleep(1.5)
    assert runs(broker, "long") == [("long", "start"), ("long", "done")]


def test_worker_events_reach_an_events_consumer(broker: str, client: Celery) -> None:
    seen: list[str] = []
    receivers: list[Any] = []

    def capture() -> None:
        with client.connection_for_read() as conn:
            recv = client.events.Receiver(conn, handlers={"*": lambda e: seen.append(e["type"])})
            receivers.append(recv)
            recv.capture(limit=None, timeout=60, wakeup=False)

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    wait_for(lambda: receivers, what="events receiver")
    time.sleep(1.0)  # let the receiver declare and bind its queue
    try:
        with worker(APP, queues=["celery"], env=env(broker),
                            extra_args=["-E"]) as proc:
            client.send_task("record", args=["evented"])
            wait_for(lambda: "task-succeeded" in seen, timeout=30,
                     what="task-succeeded event", proc=proc)
    finally:
        receivers[0].should_stop = True
        thread.join(10)
    assert "task-received" in seen and "task-started" in seen
