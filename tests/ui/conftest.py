"""Fixtures of the console tests.

- ``console_db``: a database for the module (runs of several tests share it);
- ``worker``: a real ``celery -A tests.ui.console_app worker`` on that database;
- ``client``: Starlette's TestClient on :func:`swf_celery.ui.create_app` (real database);
- ``live_console``: the app served by uvicorn in a thread (base URL), for HTTP streams and
  the browser;
- ``browser_page``: a Playwright page in Debian's Chromium (skipped, saying why, when
  Playwright or ``/usr/bin/chromium`` is missing: ``make chromium`` installs it).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port, read_log, wait_until, worker_process

pytest.importorskip("starlette", reason="the web extra (starlette) is not installed")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx (test extra)")

QUEUE = "console_steps"
#: Where the browser tests save their screenshots (docs/img/ when refreshing the README's).
SCREENSHOTS_ENV = "SWF_CONSOLE_SCREENSHOTS"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


@pytest.fixture(scope="module")
def console_db(module_db_url: str) -> str:
    return module_db_url


@pytest.fixture(scope="module")
def worker(console_db: str) -> Iterator[Any]:
    with worker_process("tests.ui.console_app", queues=[QUEUE], concurrency=2,
                        env={"SWF_DATABASE_URL": console_db}) as proc:
        yield proc
        assert proc.poll() is None, f"worker died:\n{read_log(proc)[-3000:]}"


@pytest.fixture(scope="module")
def celery_app(console_db: str) -> Any:
    """The tests' Celery app on this module's database (as the worker has it)."""
    from celery import Celery

    from tests.helpers import swf_url

    app = Celery("console_tests", broker=swf_url(console_db), backend=swf_url(console_db))
    app.conf.update(task_default_queue=QUEUE)
    return app


@pytest.fixture
def client(console_db: str) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from swf_celery.ui import create_app

    # TestClient's requests name the host "testserver".
    app = create_app(console_db, allowed_hosts=["testserver"], require_token=False)
    with TestClient(app, follow_redirects=False) as tc:
        yield tc


@pytest.fixture(scope="module")
def live_console(console_db: str, celery_app: Any) -> Iterator[str]:
    uvicorn = pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")
    from swf_celery.ui import LOOPBACK_HOSTS, create_app

    port = free_port()
    app = create_app(console_db, allowed_hosts=LOOPBACK_HOSTS, require_token=False,
                     celery_app=celery_app)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), timeout=30,
               what="uvicorn started")
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def chromium_path() -> str | None:
    """Debian's Chromium, or None."""
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("chromium")
    return found


@pytest.fixture(scope="module")
def browser(live_console: str) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="Playwright is not installed (test extra)")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium at /usr/bin/chromium: the browser tests need Debian's "
                    "chromium package (make chromium, or apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        chromium = pw.chromium.launch(executable_path=path, headless=True,
                                      args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Folder for screenshots: ``$SWF_CONSOLE_SCREENSHOTS`` (e.g. docs/img) or a temp dir."""
    target = os.environ.get(SCREENSHOTS_ENV)
    folder = Path(target) if target else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder
