"""Fixtures of the schedule tests: real ``celery beat`` processes of :mod:`.beat_app`, a
real worker, and the table its task writes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, sql, wait_until, worker_process

APP = "tests.schedules.beat_app"


def beat_log(proc: subprocess.Popen[bytes]) -> str:
    """What a beat process has logged so far."""
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


@contextlib.contextmanager
def beat_process(db_url: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A beat_app beat -S swf_celery.schedules.Scheduler`` until the block
    ends (TERM, then KILL)."""
    log = tempfile.NamedTemporaryFile(prefix="celery-beat-", suffix=".log", delete=False)
    full_env = {**os.environ, "SWF_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", APP, "beat", "-S",
         "swf_celery.schedules.Scheduler", "--loglevel=INFO"],
        stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=str(ROOT),
        start_new_session=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    try:
        wait_until(lambda: "beat: Starting" in beat_log(proc) or proc.poll() is not None,
                   timeout=60, what="beat to start")
        assert proc.poll() is None, beat_log(proc)
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def beat_db(db_url: str) -> str:
    """``db_url`` with the table the app's task writes (``beat_runs``)."""
    sql(db_url, "CREATE TABLE beat_runs (task_id text, tag text, "
                "started_at timestamptz DEFAULT clock_timestamp())")
    return db_url


@pytest.fixture
def beat_worker(beat_db: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker of the beat app on ``beat_db``."""
    with worker_process(APP, env={"SWF_DATABASE_URL": beat_db}, concurrency=2) as proc:
        yield proc


@pytest.fixture
def beats() -> Iterator[Callable[..., Any]]:
    """Start beat processes (``beats(db_url, **env)``); all are stopped at the end."""
    stack = contextlib.ExitStack()
    with stack:
        yield lambda db_url, **env: stack.enter_context(beat_process(db_url, **env))


def ticks(db_url: str, name: str) -> list[tuple[Any, ...]]:
    """``(tick_at, outcome, task_id, run_id, missed, beat)`` of entry ``name``, in order."""
    return sql(db_url, "SELECT t.tick_at, t.outcome, t.task_id, t.run_id, t.missed, t.beat "
                       "FROM swf.schedule_ticks t JOIN swf.schedules s ON s.id = t.schedule_id "
                       "WHERE s.name = %s ORDER BY t.tick_at", (name,))


def runs(db_url: str, tag: str) -> list[str]:
    """Task ids of the recorded runs of ``tag``."""
    return [r[0] for r in sql(db_url, "SELECT task_id FROM beat_runs WHERE tag = %s", (tag,))]


def wait_ticks(db_url: str, name: str, count: int, timeout: float = 30) -> None:
    """Wait until entry ``name`` has at least ``count`` ticks."""
    wait_until(lambda: len(ticks(db_url, name)) >= count, timeout=timeout,
               what=f"{count} ticks of {name}")


def settle(seconds: float) -> None:
    """Let beats and workers run for ``seconds``."""
    time.sleep(seconds)
