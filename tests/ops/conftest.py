"""Fixtures of the operations tests (embedded server, migrations, Redis drain).

``redis_queue``: a Redis queue name unique to the test, its keys deleted before and after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def redis_queue(redis_client: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"drain_{os.getpid()}_{request.node.name[-20:]}".replace("[", "_").replace("]", "")

    def keys() -> list[bytes]:
        return list(redis_client.scan_iter(match=f"{name}*"))

    for key in keys():
        redis_client.delete(key)
    yield name
    for key in keys():
        redis_client.delete(key)
