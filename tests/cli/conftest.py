"""Fixtures of the ``swf-celery`` command tests: ``listening`` starts ``swf-celery listen``
subprocesses on the test's database and kills any still running afterwards."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import start_cli


@pytest.fixture
def listening(db_url: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``listening(channel, *options)``: a ``swf-celery listen`` that is ready to receive."""
    procs: list[subprocess.Popen[str]] = []

    def start(channel: str, *options: str) -> subprocess.Popen[str]:
        proc = start_cli("listen", channel, *options, database=db_url)
        procs.append(proc)
        ready = proc.stderr.readline()  # type: ignore[union-attr]
        if ready.startswith("database: "):  # the database a command uses comes first
            ready = proc.stderr.readline()  # type: ignore[union-attr]
        assert ready.startswith(f"listening on {channel}"), ready + proc.stderr.read()
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
