"""The console served by uvicorn: the Server-Sent Events of a run, and /metrics scraped over
HTTP, with a real worker running the steps."""

from __future__ import annotations

import http.client
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

import swf_celery as swf
from tests.helpers import sse_events, wait_until
from tests.ui.console_app import Report

pytestmark = pytest.mark.slow


def _events(base: str, path: str) -> Iterator[tuple[str, Any]]:
    where = urlsplit(base)
    return sse_events(where.hostname or "127.0.0.1", where.port or 80, path)


def test_run_events_stream_every_step_and_the_end(live_console: str, console_db: str,
                                                  worker: Any) -> None:
    run_id = swf.Executor.start(Report, {"sleep": 0.3}, console_db)
    swf.pause_workflow_run(run_id, console_db)  # hold the dependents until the stream is up
    seen: list[tuple[str, Any]] = []
    for kind, data in _events(live_console, f"/runs/{run_id}/events"):
        seen.append((kind, data))
        if kind == "ready":
            swf.resume_workflow_run(run_id, console_db)
        if kind == "run" and data["finished"]:
            break
    assert seen[0] == ("ready", {})
    completed = {d["step"] for k, d in seen if k == "step" and d["status"] == "completed"}
    assert {"parse", "enrich", "publish"} <= completed
    assert seen[-1] == ("run", {"status": "completed", "finished": True})


def test_unknown_run_has_no_event_stream(live_console: str) -> None:
    where = urlsplit(live_console)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    conn.request("GET", "/runs/00000000-0000-0000-0000-000000000000/events")
    assert conn.getresponse().status == 404
    conn.close()


def test_metrics_are_scraped_in_prometheus_format(live_console: str, console_db: str,
                                                  worker: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    run_id = swf.Executor.start(Report, {"sleep": 0}, console_db)
    wait_until(lambda: swf.get_run_status(run_id, console_db).status == "completed",
               timeout=60, what="run completed")
    with urllib.request.urlopen(f"{live_console}/metrics", timeout=30) as reply:
        assert reply.headers["content-type"].startswith("text/plain")
        text = reply.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("swf_runs", (("status", "completed"), ("workflow", "report")))] >= 1
    count = samples[("swf_step_duration_seconds_count",
                     (("queue", "console_steps"), ("step", "publish")))]
    inf = samples[("swf_step_duration_seconds_bucket",
                   (("le", "+Inf"), ("queue", "console_steps"), ("step", "publish")))]
    assert count >= 1 and inf == count
    assert ("swf_queue_depth", (("queue", "console_steps"),)) in samples
    assert ("swf_queue_dead_letters", (("queue", "console_steps"),)) in samples
    assert samples[("swf_console_scrape_errors_total", ())] == 0
