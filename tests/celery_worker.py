"""Start real ``celery worker`` subprocesses for tests and benchmarks.

``worker_process("tests.apps.noop", queues=["gpu_workers"], env={...})`` starts
``python -m celery -A <module> worker`` in the project root with the given options, waits
until the worker logs that it is ready, yields the :class:`subprocess.Popen`, and stops it
(TERM, then KILL) afterwards. The implementation is :mod:`swf_celery.worker_process`
(shared with ``make demo`` and the examples); this module pins the project root.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen
from typing import Any

from swf_celery import worker_process as _wp
from swf_celery.worker_process import kill_worker, read_log, stop_worker

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT", "kill_worker", "read_log", "stop_worker", "worker_process"]


@contextlib.contextmanager
def worker_process(app: str, **options: Any) -> Iterator[Popen[bytes]]:
    """Run ``celery -A app worker`` from the project root until the block ends."""
    options.setdefault("cwd", ROOT)
    with _wp.worker_process(app, **options) as proc:
        yield proc
