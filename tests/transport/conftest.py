"""Fixtures of the broker tests: ``broker_url`` (the swf:// URL of a fresh database) and
``connections`` (a factory of connected kombu Connections, released after the test)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

import swf_celery  # noqa: F401 - registers swf://
from tests.helpers import swf_url


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
