"""``swf-celery ui`` as a user starts it."""

from __future__ import annotations

import os
import urllib.request

import pytest

from tests.helpers import free_port, run_cli, start_cli, wait_until

pytestmark = pytest.mark.slow


def test_ui_serves_the_console_on_loopback(db_url: str) -> None:
    pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")
    port = free_port()
    proc = start_cli("ui", "--port", str(port), "--read-only", database=db_url)
    try:
        def page() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    return r.read().decode()
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                return None

        html = wait_until(page, timeout=60, what="the console answered")
        assert "<h1>Runs</h1>" in html and "read-only" in html
    finally:
        proc.terminate()
        proc.wait(15)
    assert proc.stdout is not None
    assert f"http://127.0.0.1:{port}/" in proc.stdout.read()


def test_ui_refuses_a_public_bind_without_a_token(db_url: str) -> None:
    result = run_cli("ui", "--host", "0.0.0.0", database=db_url,
                     env={**os.environ, "SWF_UI_TOKEN": ""})
    assert result.returncode == 1
    assert "SWF_UI_TOKEN" in result.stderr and "error:" in result.stderr
