"""A Celery app for the result backend tests: ``make_app(database_url, queue)``.

The broker and the backend are the ``swf://`` URLs of the test database.

``celery -A tests.results.backend_app worker`` builds the module-level ``app`` from
``SWF_TEST_DATABASE_URL`` and ``SWF_TEST_QUEUE`` (see tests.helpers.worker_process).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery

from swf_celery import db


def make_app(database_url: str, queue: str, **conf: Any) -> Celery:
    """An app on ``queue`` with the swf backend on ``database_url`` and the test tasks."""
    app = Celery("backend_tests", set_as_current=False)
    app.conf.update(
        broker_url=db.broker_url(database_url),
        result_backend=db.broker_url(database_url),
        task_default_queue=queue,
        task_track_started=True,
        result_extended=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_chord_join_timeout=10,
        **conf,
    )
    register_tasks(app)
    return app


def register_tasks(app: Celery) -> None:
    """Define the test tasks on ``app``."""

    @app.task(name="t.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.tsum", shared=False)
    def tsum(values: list[Any]) -> Any:
        return sum(_flatten(values))

    @app.task(name="t.noop", shared=False)
    def noop() -> None:
        return None

    @app.task(name="t.echo", shared=False)
    def echo(value: Any) -> Any:
        return value

    @app.task(name="t.fail", shared=False)
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name="t.big", shared=False)
    def big(size: int) -> str:
        return "x" * size

    @app.task(name="t.wait_for_file", shared=False)
    def wait_for_file(path: str, value: Any = None, limit: float = 60.0) -> Any:
        deadline = time.monotonic() + limit
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not appear")
            time.sleep(0.05)
        return value

    @app.task(name="t.retry_until_file", shared=False, bind=True, max_retries=None)
    def retry_until_file(self: Any, path: str, value: Any = None) -> Any:
        if not os.path.exists(path):
            raise self.retry(countdown=0.2)
        return value

    @app.task(name="t.grow_chord", bind=True, shared=False)
    def grow_chord(self: Any, value: int) -> int:
        self.add_to_chord(app.tasks["t.echo"].s(value * 100))
        return value

    @app.task(name="t.append_line", shared=False)
    def append_line(values: Any, path: str) -> Any:
        with open(path, "a") as f:
            f.write(f"{values!r}\n")
        return values

    @app.task(name="t.record_group", bind=True, shared=False)
    def record_group(self: Any, value: Any, path: str) -> Any:
        # One line per run: the group (chord header) id this copy ran in.
        with open(path, "a") as f:
            f.write(f"{self.request.group}\n")
        return value

    @app.task(name="t.record_failure", shared=False)
    def record_failure(task_id: str, directory: str) -> str:
        # Old-style errback: applied as a task with the failed task's id.
        Path(directory, task_id).write_text("failed")
        return task_id

    @app.task(name="t.record_error", shared=False)
    def record_error(request: Any, exc: BaseException, traceback: Any, directory: str) -> None:
        # New-style errback: called in the worker with the request and the exception.
        Path(directory, request.id).write_text(f"{type(exc).__name__}: {exc}")


def _flatten(values: Any) -> list[Any]:
    if isinstance(values, (list, tuple)):
        return [x for v in values for x in _flatten(v)]
    return [values]


_url = os.environ.get("SWF_TEST_DATABASE_URL")
app = make_app(_url, os.environ.get("SWF_TEST_QUEUE", "backend-tests")) if _url else None
