"""Fixtures of the example smoke tests.

``web_server``: the web_events example's ASGI app served by uvicorn in a thread, with a
real ``celery worker`` for its steps; yields the port (skipped without the web extra).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.helpers import free_port, read_log, wait_until, worker_process


@pytest.fixture
def web_server(db_url: str) -> Iterator[int]:
    pytest.importorskip("starlette", reason="the web extra (starlette) is not installed")
    uvicorn = pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")
    from examples.web_events.web import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(db_url, speed=0.3), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    with worker_process("examples.web_events.tasks", queues=["web_steps"], concurrency=3,
                        env={"SWF_DATABASE_URL": db_url}) as worker:
        thread.start()
        wait_until(lambda: server.started or not thread.is_alive(), timeout=30,
                   what="uvicorn started")
        assert server.started, "uvicorn did not start"
        try:
            yield port
            assert worker.poll() is None, f"worker died:\n{read_log(worker)[-3000:]}"
        finally:
            server.should_exit = True
            thread.join(10)
