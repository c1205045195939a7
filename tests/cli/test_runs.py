"""The run commands of `swf-celery`, run as subprocesses against a real database."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from swf_celery.db import resolve
from swf_celery.workflows import coordinator
from swf_celery.workflows.executor import Executor
from tests.helpers import error_lines, run_cli, start_cli, swf_url
from tests.workflows.sample_flows import Diamond
from tests.workflows.sample_flows import chain as _chain


def _json(*args: str, url: str) -> Any:
    proc = run_cli(*args, "--json", database=url)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_runs_list_and_show(db_url: str) -> None:
    run_id = Executor.execute(Diamond, {"n": 1}, db_url).run_id
    listed = _json("runs", "list", url=db_url)
    assert [(r["run_id"], r["status"], r["completed_steps"]) for r in listed] == [
        (run_id, "completed", 4)]
    assert _json("runs", "list", "--status", "failed", url=db_url) == []
    shown = _json("runs", "show", run_id, url=db_url)
    assert shown["status"] == "completed" and shown["percentage"] == 100.0
    assert [s["name"] for s in shown["steps"]] == ["fetch", "left", "right", "join"]
    human = run_cli("runs", "show", run_id, database=db_url)
    assert human.returncode == 0 and "join" in human.stdout and "4/4 steps" in human.stdout


def test_pause_resume_cancel_retry_commands(db_url: str) -> None:
    db = resolve(db_url)
    run_id = coordinator.start_run(db, _chain("a", "b", queue="cli_q"), {})
    assert _json("pause", run_id, url=db_url) == {"run_id": run_id, "status": "paused"}
    assert _json("resume", run_id, url=db_url)["status"] == "in_progress"
    proc = run_cli("cancel", run_id, "--reason", "from the CLI", database=db_url)
    assert proc.returncode == 0 and "cancelled" in proc.stdout
    again = run_cli("cancel", run_id, database=db_url)
    assert again.returncode == 1
    (line,) = error_lines(again.stderr)
    assert line.startswith("error: ") and "force=True" in line
    new = _json("retry", run_id, url=db_url)
    assert new["retry_of"] == run_id and new["run_id"] != run_id
    with psycopg.connect(db_url) as conn:
        (error,) = conn.execute("SELECT error FROM swf.runs WHERE id = %s", (run_id,)).fetchone()
    assert error == "from the CLI"


def test_unknown_run_is_one_line_and_nonzero(db_url: str) -> None:
    proc = run_cli("runs", "show", "00000000-0000-0000-0000-00000000abcd", database=db_url)
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [
        "error: run 00000000-0000-0000-0000-00000000abcd does not exist"]
    proc = run_cli("runs", "list", "--status", "running", database=db_url)
    assert proc.returncode == 1 and "unknown run status 'running'" in proc.stderr


def test_runs_watch_follows_events_until_the_run_ends(db_url: str) -> None:
    db = resolve(db_url)
    run_id = coordinator.start_run(db, _chain("a", "b"), {})
    watch = start_cli("runs", "watch", run_id, database=db_url)
    try:
        # Drive the run's local steps by hand; each completion is an event the watcher sees.
        for _step in ("a", "b"):
            claimed: list[Any] = []
            while not claimed:
                claimed = coordinator.claim_local_tasks(db, run_id, 5)
            coordinator.complete_task(db, claimed[0][0], 1)
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 0, err
    assert f"run {run_id} completed" in out


def test_cancel_canvas_command(db_url: str) -> None:
    from celery import Celery

    client = Celery("cli-canvas", broker=swf_url(db_url), set_as_current=False)
    sent = client.send_task("tests.workflows.engine_app.touch", args=["/nonexistent"],
                            queue="cli_canvas_q")
    client.close()
    out = _json("cancel-canvas", sent.id, url=db_url)
    assert out == {"root_id": sent.id, "removed": 1, "revoked": []}
