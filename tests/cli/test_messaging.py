"""`swf-celery listen` and `send` as subprocesses against a real database."""

from __future__ import annotations

import json
import os

import pytest

import swf_celery
from tests.helpers import error_lines, run_cli, run_module


def test_send_prints_the_message_id_and_stores_the_json(db_url: str) -> None:
    out = run_cli("send", "orders", '{"order": 7, "items": ["a"]}', database=db_url)
    assert out.returncode == 0, out.stderr
    message_id = int(out.stdout.strip())
    assert swf_celery.get_message("orders", message_id, db_url).body == {
        "order": 7, "items": ["a"]}
    as_json = run_cli("send", "orders", "[1, 2]", "--json", database=db_url)
    assert json.loads(as_json.stdout) == {"channel": "orders", "message_id": message_id + 1}


def test_listen_json_prints_each_notification_and_exits_after_count(
    db_url: str, listening,  # noqa: ANN001
) -> None:
    proc = listening("orders", "--json", "--count", "3")
    sent = run_cli("send", "orders", '{"a": 1}', database=db_url)
    assert sent.returncode == 0, sent.stderr
    swf_celery.notify_only("orders", {"hello": "world"}, db_url)
    swf_celery.send_with_notify("orders", {"a": 2}, db_url)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(n["kind"], n["message_id"]) for n in lines] == [
        ("message", int(sent.stdout)), ("notify", None), ("message", int(sent.stdout) + 1)]
    assert json.loads(lines[1]["payload"]) == {"hello": "world"}
    assert all(n["channel"] == "orders" for n in lines)


def test_listen_human_output_and_workflow_events(db_url: str, listening) -> None:  # noqa: ANN001
    proc = listening("workflow_events", "--count", "1")
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT pg_notify('swf_workflow_events', "
                     "'{\"run_id\":\"r1\",\"step\":\"fetch\",\"status\":\"started\"}')")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.strip() == 'workflow_events  {"run_id":"r1","step":"fetch","status":"started"}'


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["send", "x" * 100, "{}"], "limit is 63"),
        (["send", "é" * 40, "{}"], "80 bytes long"),
        (["send", "orders", '{"unterminated": '], "JSON argument is not valid JSON"),
        (["send", "swf:workflow_events", "{}"], "reserved"),
        (["listen", ""], "channel name is empty"),
    ],
)
def test_errors_are_one_line_and_exit_1(db_url: str, args: list[str], fragment: str) -> None:
    out = run_cli(*args, database=db_url)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], out.stderr


def test_unreachable_database_is_one_line() -> None:
    out = run_cli("listen", "orders", database="postgresql://postgres@127.0.0.1:1/x", timeout=60)
    assert out.returncode == 1
    assert error_lines(out.stderr) == [error_lines(out.stderr)[0]]
    assert error_lines(out.stderr)[0].startswith("error: cannot reach PostgreSQL")


def test_same_commands_under_celery(db_url: str, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "msgapp.py").write_text("from celery import Celery\napp = Celery('msgapp')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = run_module("celery", "-A", "msgapp", "swf", "send", "orders", '{"c": 1}', "-d", db_url,
                     env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert swf_celery.get_message("orders", int(out.stdout), db_url).body == {"c": 1}
