"""Fixtures of the broker tests: ``broker_url`` (the swf:// URL of a fresh database),
``connections`` (a factory of connected kombu Connections, released after the test) and
``sleepers`` (LISTEN sessions asleep on queues as a worker's consumer is)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery
from kombu import Connection

import swf_celery  # noqa: F401 - registers swf://
from swf_celery.db import load_queries
from swf_celery.transport import handover
from tests.helpers import create_task_runs, sql, swf_url


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


TRANSPORT_QUERIES = load_queries("swf_celery.transport")


class Sleeper:
    """A LISTEN session on its own wake-up channel, as a worker's consumer has; with
    ``holds_lock`` false, as a consumer of release 23 or older has (no sleeper lock)."""

    def __init__(self, url: str, channel: str, *, holds_lock: bool = True) -> None:
        self.url = url
        self.channel = channel
        self.key = handover.new_key()
        self.conn = psycopg.connect(url, autocommit=True)
        if holds_lock:
            self.conn.execute(TRANSPORT_QUERIES["hold_sleeper"])
        self.conn.execute(f'LISTEN "{channel}"')

    def sleep_on(self, queue: str, claim_ms: int | None = None) -> float | None:
        """Sleep on ``queue`` (``swf.queue_sleep``), taking hand-overs when ``claim_ms``."""
        return sql(self.url, "SELECT swf.queue_sleep(%s, %s, %s, %s, %s)",
                   ([queue], self.channel, self.conn.info.backend_pid, claim_ms,
                    self.key if claim_ms else None))[0][0]

    def woken(self) -> list[Any]:
        """Wake-ups received: a queue's channel (woken to read), a handed message signed with
        this sleeper's key (its JSON), or any other payload as it came."""
        out: list[Any] = []
        for note in self.conn.notifies(timeout=0.3):
            body = note.payload[handover.SIGNATURE:]
            signed = body.startswith("{") and note.payload[:handover.SIGNATURE] == \
                handover.signature(self.key, body)
            out.append(json.loads(body) if signed else note.payload)
        return out


@pytest.fixture
def sleepers(db_url: str) -> Iterator[Any]:
    """A factory of :class:`Sleeper` on the test's database, closed after the test."""
    made: list[Sleeper] = []

    def make(channel: str, *, holds_lock: bool = True) -> Sleeper:
        made.append(Sleeper(db_url, channel, holds_lock=holds_lock))
        return made[-1]

    yield make
    for sleeper in made:
        sleeper.conn.close()
