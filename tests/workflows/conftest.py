"""Fixtures of the workflow engine tests.

``join_run_drivers``: for modules whose tests start runs in the background
(``Executor.start``); use it with ``pytestmark = pytest.mark.usefixtures(...)``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest


@pytest.fixture
def join_run_drivers(db_url: str) -> Iterator[None]:
    """Let background run drivers (Executor.start) see their run end before the database
    is dropped (this fixture is torn down before ``db_url``)."""
    yield
    for thread in threading.enumerate():
        if thread.name.startswith("swf-run-"):
            thread.join(10)
