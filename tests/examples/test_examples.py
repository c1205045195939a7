"""Smoke tests: ``make demo`` and every example run end to end, as a user runs them.

Each runs its documented command (``python -m …``) as a subprocess on a fresh database of
the server under test; the examples start their own ``celery worker`` subprocesses.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import REDIS_URL, ROOT, run_module, sse_events

pytestmark = pytest.mark.slow


def _run(module: str, database_url: str, **env: str) -> str:
    full_env = dict(os.environ, SWF_DATABASE_URL=database_url, **env)
    full_env["PYTHONPATH"] = str(ROOT)
    proc = run_module(module, env=full_env, cwd=ROOT, timeout=150)
    assert proc.returncode == 0, f"{module} exited {proc.returncode}:\n{proc.stdout}\n" \
                                 f"{proc.stderr[-4000:]}"
    return proc.stdout


def _result(output: str) -> str:
    [line] = [line for line in output.splitlines() if line.startswith("result: ")]
    return line.removeprefix("result: ")


def test_demo_from_an_empty_database(empty_db_url: str) -> None:
    output = _run("examples.demo.app", empty_db_url)
    assert json.loads(_result(output)) == {"publish": {
        "indexed": 6, "kinds": ["invoice", "letter"], "summary": "6 documents", "tokens": 30}}
    assert "6/6 steps" in output
    assert "worker stopped (exit code 0)" in output  # a warm shutdown, not a kill
    assert "swf-celery ui, then open http://127.0.0.1:8800/runs/" in output


def test_gpu_pipeline_routes_gpu_steps_to_the_gpu_worker(db_url: str) -> None:
    output = _run("examples.gpu_pipeline.run", db_url)
    ran_on = json.loads(_result(output))["evaluate"]["ran_on"]
    assert ran_on["train"].startswith("gpu@")
    assert ran_on["embed"].startswith("gpu@")
    assert ran_on["evaluate"].startswith("cpu@")
    assert "train       completed  queue=gpu_workers" in output


def test_from_redis_moves_the_backlog_and_runs_it_on_swf(db_url: str,
                                                         redis_client: Any) -> None:
    for key in redis_client.scan_iter(match="shop*"):  # leftovers of an interrupted run
        redis_client.delete(key)
    output = _run("examples.from_redis.run", db_url, REDIS_URL=REDIS_URL)
    assert "shop: moved 4 messages" in output
    assert "{'invoice': 3, 'amount': 30.0}" in output
    assert "receipt 3 sent" in output
    assert _result(output) == "moved and ran 4 tasks"


def test_lifecycle_pause_resume_retry_cancel(db_url: str) -> None:
    output = _run("examples.lifecycle.run", db_url)
    lines = output.splitlines()

    def line(label: str) -> str:
        [found] = [x for x in lines if x.strip().startswith(label)]
        return found

    assert " paused " in line("extract finished") and "transform=ready" in line(
        "extract finished")
    assert "completed" in line("completed")
    assert "quality_gate=failed" in line("failed")
    assert "reused without running again: extract, transform" in output
    assert " cancelled " in line("cancelled") and "transform=cancelled" in line("cancelled")
    assert _result(output) == "{'publish': 'published 600 rows'}"


# -- web_events: the ASGI app in-process (web_server), a real worker, a real SSE stream ---


def _request(port: int, method: str, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path)
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read() or b"null")
    finally:
        conn.close()


def _sse(port: int, path: str) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of the local web example's Server-Sent Events stream."""
    return sse_events("127.0.0.1", port, path)


def test_web_events_stream_a_run_to_the_browser(web_server: int) -> None:
    port = web_server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/")
    reply = conn.getresponse()
    status, page = reply.status, reply.read().decode()
    conn.close()
    assert status == 200 and "new EventSource" in page

    created, body = _request(port, "POST", "/runs")
    assert created == 201
    run_id = body["run_id"]
    events = list(_sse(port, f"/runs/{run_id}/events"))

    first_kind, first = events[0]
    assert first_kind == "snapshot" and first["run_id"] == run_id
    assert [s["name"] for s in first["steps"]] == [
        "ingest", "parse_orders", "parse_refunds", "parse_customers", "merge", "report"]
    workflow = [data for kind, data in events if kind == "workflow"]
    assert all(e["run_id"] == run_id for e in workflow)
    completed = {e["step"] for e in workflow if e["status"] == "completed"}
    # Steps that finished before the stream opened are in the snapshot instead.
    done_at_start = {s["name"] for s in first["steps"] if s["status"] == "completed"}
    assert completed | done_at_start == {"ingest", "parse_orders", "parse_refunds",
                                         "parse_customers", "merge", "report", None}
    assert workflow[-1] == {"run_id": run_id, "step": None, "status": "completed"}
    last_kind, last = events[-1]
    assert last_kind == "snapshot" and last["status"] == "completed"
    assert last["output"] == {"report": "1163 net orders from 410 customers"}

    # A finished run: one snapshot and the stream ends; an unknown run: 404.
    assert [kind for kind, _ in _sse(port, f"/runs/{run_id}/events")] == ["snapshot"]
    assert _request(port, "GET", "/runs/00000000-0000-0000-0000-000000000000")[0] == 404
    assert _request(port, "GET", f"/runs/{run_id}")[1]["status"] == "completed"


def test_web_orders_enqueue_inside_the_request_transaction(db_url: str) -> None:
    pytest.importorskip("starlette", reason="the web extra (starlette) is not installed")
    output = _run("examples.web_orders.run", db_url)
    assert "-> 402 {'error': 'payment refused'}" in output
    assert "order 1 book  confirmed=True" in output and "order 3 pen   confirmed=True" in output
    assert "lamp" not in output.split("-> 402")[1]  # the failed order left no row
    assert _result(output) == "2 orders, 2 confirmed"
