"""Fixtures of the flow-control tests: a fresh database with ``task_runs``, a client app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

import swf_celery  # noqa: F401 - registers swf://
from tests.helpers import create_task_runs, swf_url
from tests.limits.limits_app import make_app


@pytest.fixture
def broker(db_url: str) -> str:
    """The swf:// URL of a fresh database with the table ``task_runs``."""
    create_task_runs(db_url)
    return swf_url(db_url)


@pytest.fixture
def client(broker: str) -> Iterator[Celery]:
    """The test app (tests.limits.limits_app) as a client of :func:`broker`."""
    app = make_app(broker)
    yield app
    app.close()
