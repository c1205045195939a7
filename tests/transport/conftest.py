"""Fixtures of the broker tests: ``broker_url`` (the swf:// URL of a fresh database) and
``connections`` (a factory of connected kombu Connections, released after the test)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from kombu import Connection

import swf_celery  # noqa: F401 - registers swf://
from tests.helpers import create_task_runs, swf_url


@pytest.fixture
def broker_url(db_url: str) -> str:
    return swf_url(db_url)


@pytest.fixture
def connections(broker_url: str) -> Iterator[Any]:
    opened: list[Connection] = []

    def make(**options: Any) -> Connection:
        conn = Connection(broker_url, transport_options={"visibility_timeout": 30, **options})
        conn.connect()
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.release()


@pytest.fixture
def broker(db_url: str) -> str:
    """The swf:// URL of a fresh database with the table ``task_runs`` (worker tests)."""
    create_task_runs(db_url)
    return swf_url(db_url)


@pytest.fixture
def client(broker: str) -> Iterator[Celery]:
    """A Celery client app on :func:`broker`."""
    app = Celery("client", broker=broker, set_as_current=False)
    yield app
    app.close()
