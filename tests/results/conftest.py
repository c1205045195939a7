"""Fixtures of the result backend tests.

``backend_db``: a migrated database shared by one test module (tests use distinct task
ids, so they do not see each other's rows). ``celery_app``: an app on a queue of its own
with the swf backend on that database. ``worker``: an in-process Celery worker (threads
pool) running ``celery_app``'s tasks for the whole module.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from tests.results.backend_app import make_app


@pytest.fixture(scope="module")
def backend_db(module_db_url: str) -> str:
    return module_db_url


@pytest.fixture(scope="module")
def celery_app(backend_db: str) -> Iterator[Celery]:
    app = make_app(backend_db, f"backend-{uuid.uuid4().hex[:12]}")
    yield app
    app.backend.close()
    app.close()


@pytest.fixture(scope="module")
def worker(celery_app: Celery) -> Iterator[Any]:
    with start_worker(celery_app, concurrency=4, pool="threads", perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=20) as w:
        yield w
