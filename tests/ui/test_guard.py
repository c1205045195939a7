"""The console answers only to the Host names it was started for, so a web page whose DNS
name was rebound to the console's loopback address can neither read it nor drive it; and a
console mounted in another app needs the same guard (allowed hosts, a token or an explicit
opt-out) before it serves at all."""

from __future__ import annotations

import http.client
import json
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

import swf_celery as swf
from swf_celery.errors import ConfigurationError, SwfError
from swf_celery.ui.security import host_name
from tests.helpers import free_port, run_cli, sql, sql_value, start_cli, wait_until
from tests.ui.console_app import IDLE_QUEUE, Held

REBOUND = "attacker.example:8080"
SECRET_INPUT = "input-only-the-operator-may-read"
SECRET_LETTER = "dead-letter-only-the-operator-may-read"


class Reply:
    """Status, headers and text of one HTTP exchange."""

    def __init__(self, status: int, headers: Mapping[str, str], text: str) -> None:
        self.status, self.headers, self.text = status, headers, text


def _send(port: int, method: str, path: str, host: str, headers: Mapping[str, str] = (),
          body: str | None = None) -> Reply:
    # http.client sends the Host header given here instead of its own, as a browser on a
    # rebound name does (its Host is the page's name, the address is the console's).
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **dict(headers)})
        reply = conn.getresponse()
        return Reply(reply.status, {k.lower(): v for k, v in reply.getheaders()},
                     reply.read().decode("utf-8", "replace"))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def cli_console(console_db: str) -> Iterator[int]:
    """``swf-celery ui`` on 127.0.0.1 (no token), as a user starts it, plus one more name."""
    pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SWF_UI_TOKEN"}
    proc = start_cli("ui", "--port", str(port), "--allowed-host", "console.internal",
                     database=console_db, env=env)

    def up() -> bool:
        try:
            return _send(port, "GET", "/static/console.css", f"127.0.0.1:{port}").status == 200
        except OSError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            return False

    try:
        wait_until(up, timeout=60, what="the console answered")
        yield port
    finally:
        proc.terminate()
        proc.wait(15)


def _held_run_with_a_dead_letter(console_db: str) -> str:
    run_id = swf.Executor.start(Held, {"secret": SECRET_INPUT}, console_db)
    sql(console_db, "INSERT INTO swf.dead_letters (queue, msg_id, read_ct, enqueued_at, reason, "
                    "message) VALUES (%s, 1, 1, now(), 'rejected', %s::jsonb)",
        (IDLE_QUEUE, json.dumps({"secret": SECRET_LETTER})))
    return run_id


def _csrf(port: int, path: str) -> tuple[str, str]:
    """(cookie header, form token) as the console hands them to a browser on its own name."""
    page = _send(port, "GET", path, f"127.0.0.1:{port}")
    cookie = page.headers["set-cookie"].split(";")[0]
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert token, page.text[:500]
    return cookie, token.group(1)


@pytest.mark.slow
def test_a_rebound_host_can_neither_read_nor_drive_the_console(cli_console: int,
                                                               console_db: str) -> None:
    port = cli_console
    run_id = _held_run_with_a_dead_letter(console_db)
    reads = ["/", f"/runs/{run_id}", f"/runs/{run_id}?step=hold", f"/queues/{IDLE_QUEUE}",
             "/queues", "/metrics", "/flows", "/goals", "/events", "/static/console.js"]
    # The console's own names read everything (so the refusals below are the Host check).
    assert SECRET_INPUT in _send(port, "GET", f"/runs/{run_id}?step=hold",
                                 f"127.0.0.1:{port}").text
    assert SECRET_LETTER in _send(port, "GET", f"/queues/{IDLE_QUEUE}", f"localhost:{port}").text
    assert _send(port, "GET", "/", f"[::1]:{port}").status == 200
    assert _send(port, "GET", "/", f"console.internal:{port}").status == 200  # --allowed-host

    for path in reads:
        reply = _send(port, "GET", path, REBOUND)
        assert reply.status == 400, (path, reply.status)
        assert SECRET_INPUT not in reply.text and SECRET_LETTER not in reply.text
        assert "attacker.example" in reply.text and reply.headers["x-content-type-options"]

    # Writes from the rebound page: its Origin matches its Host, and it even has a CSRF pair
    # (taken here from the console's own name, which the page could not read).
    cookie, token = _csrf(port, f"/runs/{run_id}")
    posted = {"content-type": "application/x-www-form-urlencoded", "cookie": cookie,
              "origin": f"http://{REBOUND}"}
    for path, form in ((f"/runs/{run_id}/cancel", f"csrf={token}"),
                       (f"/runs/{run_id}/pause", f"csrf={token}"),
                       (f"/queues/{IDLE_QUEUE}/dead-letters/purge", f"csrf={token}")):
        assert _send(port, "POST", path, REBOUND, posted, form).status == 400, path
    assert swf.get_run_status(run_id, console_db).status == "in_progress"
    assert sql_value(console_db, "SELECT count(*) FROM swf.dead_letters WHERE queue = %s",
                     (IDLE_QUEUE,)) == 1

    # The same POST on the console's own name and origin is obeyed.
    own = {**posted, "origin": f"http://127.0.0.1:{port}"}
    reply = _send(port, "POST", f"/runs/{run_id}/cancel", f"127.0.0.1:{port}", own,
                  f"csrf={token}")
    assert reply.status == 303
    assert swf.get_run_status(run_id, console_db).status == "cancelled"
    sql(console_db, "DELETE FROM swf.dead_letters WHERE queue = %s", (IDLE_QUEUE,))


@pytest.mark.slow
def test_the_command_needs_names_for_a_wildcard_bind_and_a_token_for_any_name(
        console_db: str) -> None:
    env = {**os.environ, "SWF_UI_TOKEN": "a-long-random-token"}
    wildcard = run_cli("ui", "--host", "0.0.0.0", database=console_db, env=env)
    assert wildcard.returncode == 1 and "--allowed-host" in wildcard.stderr
    any_name = run_cli("ui", "--allowed-host", "*", database=console_db,
                       env={**os.environ, "SWF_UI_TOKEN": ""})
    assert any_name.returncode == 1 and "SWF_UI_TOKEN" in any_name.stderr


def test_host_names_compare_without_port_case_brackets_or_trailing_dot() -> None:
    assert host_name("attacker.example:8080") == "attacker.example"
    assert host_name("LOCALHOST.") == "localhost"
    assert host_name("127.0.0.1:8800") == "127.0.0.1"
    assert host_name("[::1]:8800") == host_name("::1") == host_name("0:0:0:0:0:0:0:1") == "::1"
    assert host_name("") == ""


@pytest.mark.slow
def test_create_app_refuses_to_serve_without_allowed_hosts_or_a_token(
        console_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from swf_celery.ui import create_app

    monkeypatch.delenv("SWF_UI_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="allowed_hosts") as missing_hosts:
        create_app(console_db, token="t0ken")
    assert isinstance(missing_hosts.value, SwfError)
    with pytest.raises(ConfigurationError, match="allowed_hosts"):
        create_app(console_db, allowed_hosts=[], token="t0ken")
    with pytest.raises(ConfigurationError, match="list of host names"):
        create_app(console_db, allowed_hosts="ops.example", token="t0ken")
    for token in (None, ""):  # "" is no token either
        with pytest.raises(ConfigurationError, match="SWF_UI_TOKEN.*require_token=False"):
            create_app(console_db, allowed_hosts=["ops.example"], token=token)
    with pytest.raises(ConfigurationError, match="any Host name"):
        create_app(console_db, allowed_hosts=["*"], require_token=False)
    monkeypatch.setenv("SWF_UI_TOKEN", "from-the-environment")
    create_app(console_db, allowed_hosts=["ops.example"])  # the token of the environment


@pytest.mark.slow
def test_mounted_console_checks_the_host_before_anything_else(console_db: str) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from swf_celery.ui import create_app

    console = create_app(console_db, allowed_hosts=["ops.example"], token="t0ken")
    outer = Starlette(routes=[Mount("/swf", app=console)])
    bearer = {"authorization": "Bearer t0ken"}
    with TestClient(outer, base_url="http://ops.example", follow_redirects=False) as tc:
        assert tc.get("/swf/queues", headers=bearer).status_code == 200
        assert tc.get("/swf/queues").status_code == 401
        rebound: dict[str, Any] = {**bearer, "host": "attacker.example"}
        assert tc.get("/swf/queues", headers=rebound).status_code == 400
        assert tc.get("/swf/metrics", headers=rebound).status_code == 400

    opted_out = create_app(console_db, allowed_hosts=["ops.example"], require_token=False)
    with TestClient(opted_out, base_url="http://ops.example:8443") as tc:
        assert tc.get("/").status_code == 200
        assert tc.get("/", headers={"host": "attacker.example:8443"}).status_code == 400
