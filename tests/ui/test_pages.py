"""The console's pages and controls through Starlette's TestClient, on a real database
with a real ``celery worker`` (runs, steps, queues and dead letters are the real thing)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import swf_celery as swf
from swf_celery.db import resolve
from swf_celery.ui import queues, runs
from tests.helpers import wait_until
from tests.ui.console_app import QUEUE, Held, Report, reject_once

pytestmark = pytest.mark.slow


def _csrf(client: Any, path: str) -> str:
    page = client.get(path).text
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert match, f"no CSRF field on {path}"
    return match.group(1)


def _finished(url: str, run_id: str) -> Any:
    return wait_until(lambda: (s := swf.get_run_status(run_id, url)).status in (
        "completed", "failed", "cancelled") and s, timeout=60, what=f"run {run_id} finished")


def test_runs_list_filters_pages_and_counts(client: Any, console_db: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # No worker consumes Held's queue: these runs stay in progress until paused or cancelled.
    ids = [swf.Executor.start(Held, {}, console_db) for _ in range(3)]
    swf.pause_workflow_run(ids[1], console_db)
    swf.cancel_workflow_run(ids[2], console_db, reason="not needed")
    page = client.get("/").text
    assert all(rid[:8] in page for rid in ids)
    counts = dict(re.findall(r'data-status="(\w+)"[^>]*>\w+ <b>(\d+)</b>', page))
    assert int(counts["paused"]) >= 1 and int(counts["cancelled"]) >= 1

    paused = client.get("/", params={"status": "paused"}).text
    assert ids[1][:8] in paused and ids[0][:8] not in paused and ids[2][:8] not in paused
    started = client.get("/", params={"status": "started"}).text  # the seed's filter value
    assert ids[0][:8] in started and ids[1][:8] in started and ids[2][:8] not in started
    assert "no runs match" in client.get("/", params={"workflow": "other"}).text
    assert ids[0][:8] in client.get("/", params={"window": "1h"}).text
    assert "no runs match" in client.get("/", params={"from": "2999-01-01"}).text
    bad = client.get("/", params={"status": "done"})
    assert bad.status_code == 400 and "unknown status &#x27;done&#x27;" in bad.text
    assert client.get("/", params={"from": "yesterday"}).status_code == 400

    monkeypatch.setattr(runs, "PAGE_SIZE", 2)
    first = client.get("/", params={"workflow": "held"}).text
    assert 'rel="next"' in first and len(re.findall(r'href="/runs/[0-9a-f-]{36}"', first)) == 2
    second = client.get("/", params={"workflow": "held", "page": "2"}).text
    assert 'rel="prev"' in second and re.findall(r'href="/runs/[0-9a-f-]{36}"', second)
    for rid in ids[:2]:
        swf.cancel_workflow_run(rid, console_db)


def test_run_page_draws_the_dag_attempts_and_escaped_step_data(
        client: Any, console_db: str, worker: Any) -> None:
    rid = swf.Executor.start(Report, {"sleep": 0}, console_db)
    assert _finished(console_db, rid).status == "completed"
    page = client.get(f"/runs/{rid}").text
    drawn = re.findall(r'<g class="step state-(\w+)" data-step="(\w+)"', page)
    assert sorted(drawn) == [("completed", "enrich"), ("completed", "fetch"),
                             ("completed", "parse"), ("completed", "publish")]
    assert len(re.findall(r'class="edge"', page)) == 4
    assert page.count('<rect class="bar state-completed"') == 4  # the attempts timeline
    attempts = page.split('<table class="attempts">')[1]
    assert attempts.count("<tr>") == 5 and "<td>console_steps</td>" in attempts

    detail = client.get(f"/runs/{rid}", params={"step": "fetch"}).text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in detail
    assert "<script>alert" not in detail
    assert client.get(f"/runs/{rid}", params={"step": "nope"}).status_code == 404
    assert client.get("/runs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert client.get("/runs/not-a-run").status_code == 404


def test_step_output_is_cut_at_the_cap(client: Any, console_db: str, worker: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from swf_celery.ui import run as run_module

    rid = swf.Executor.start(Report, {"sleep": 0, "pad": "y" * 500}, console_db)
    _finished(console_db, rid)
    monkeypatch.setattr(run_module, "STEP_CAP", 100)
    detail = client.get(f"/runs/{rid}", params={"step": "fetch"}).text
    assert re.search(r"showing 100 of [\d,]+ characters", detail)
    assert "y" * 101 not in detail


def test_failed_run_shows_its_error_and_retry_links_the_runs(
        client: Any, console_db: str, worker: Any) -> None:
    rid = swf.Executor.start(Report, {"sleep": 0, "fail": True}, console_db)
    assert _finished(console_db, rid).status == "failed"
    page = client.get(f"/runs/{rid}").text
    assert "enrich failed &lt;b&gt;on purpose&lt;/b&gt;" in page and "<b>on purpose" not in page
    assert 'class="step state-failed" data-step="enrich"' in page
    reply = client.post(f"/runs/{rid}/retry", data={"csrf": _csrf(client, f"/runs/{rid}")})
    assert reply.status_code == 303
    new_id = re.search(r"/runs/([0-9a-f-]{36})", reply.headers["location"]).group(1)
    assert new_id != rid
    assert f'href="/runs/{rid}">retry of {rid[:8]}' in client.get(f"/runs/{new_id}").text
    assert f'href="/runs/{new_id}">retried by {new_id[:8]}' in client.get(f"/runs/{rid}").text
    _finished(console_db, new_id)


def test_pause_resume_cancel_from_posted_forms(client: Any, console_db: str) -> None:
    rid = swf.Executor.start(Held, {}, console_db)  # stays queued: nobody consumes it
    for action, expected in (("pause", "paused"), ("resume", "in_progress")):
        reply = client.post(f"/runs/{rid}/{action}", data={"csrf": _csrf(client, f"/runs/{rid}")})
        assert reply.status_code == 303 and reply.headers["location"].startswith(f"/runs/{rid}")
        assert swf.get_run_status(rid, console_db).status == expected
    reply = client.post(f"/runs/{rid}/cancel", data={"csrf": _csrf(client, f"/runs/{rid}"),
                                                     "reason": "<i>maintenance</i>"})
    assert reply.status_code == 303
    status = swf.get_run_status(rid, console_db)
    assert status.status == "cancelled" and status.error == "<i>maintenance</i>"
    page = client.get(reply.headers["location"]).text
    assert "&lt;i&gt;maintenance&lt;/i&gt;" in page and "<i>maintenance" not in page
    # A finished run cannot be paused: the refusal is a notice, not an error page.
    reply = client.post(f"/runs/{rid}/pause", data={"csrf": _csrf(client, f"/runs/{rid}")})
    assert reply.status_code == 303 and "pause+refused" in reply.headers["location"]


def test_controls_need_a_csrf_token_and_the_same_origin(client: Any, console_db: str) -> None:
    rid = swf.Executor.start(Held, {}, console_db)
    assert client.post(f"/runs/{rid}/pause").status_code == 403
    assert client.post(f"/runs/{rid}/pause", data={"csrf": "0" * 64}).status_code == 403
    token = _csrf(client, f"/runs/{rid}")
    assert client.post(f"/runs/{rid}/pause", data={"csrf": token},
                       headers={"origin": "http://evil.example"}).status_code == 403
    assert swf.get_run_status(rid, console_db).status == "in_progress"
    swf.cancel_workflow_run(rid, console_db)


def test_read_only_console_shows_no_controls_and_refuses_posts(console_db: str) -> None:
    from starlette.testclient import TestClient

    from swf_celery.ui import create_app

    rid = swf.Executor.start(Held, {}, console_db)
    with TestClient(create_app(console_db, allowed_hosts=["testserver"], require_token=False,
                               read_only=True), follow_redirects=False) as ro:
        page = ro.get(f"/runs/{rid}").text
        assert 'method="post"' not in page and "read-only" in page
        assert ro.post(f"/runs/{rid}/cancel", data={"csrf": "x"}).status_code == 403
    assert swf.get_run_status(rid, console_db).status == "in_progress"
    swf.cancel_workflow_run(rid, console_db)


def test_token_is_required_on_every_request_when_set(console_db: str) -> None:
    from starlette.testclient import TestClient

    from swf_celery.ui import create_app

    with TestClient(create_app(console_db, allowed_hosts=["testserver"], token="s3cret-token"),
                    follow_redirects=False) as tc:
        assert tc.get("/").status_code == 401
        assert tc.get("/metrics").status_code == 401
        assert tc.get("/", params={"token": "wrong"}).status_code == 401
        assert tc.get("/", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
        opened = tc.get("/queues", params={"token": "s3cret-token", "all": "1"})
        assert opened.status_code == 303 and opened.headers["location"] == "/queues?all=1"
        assert tc.get("/queues").status_code == 200  # the cookie set by the redirect


def test_non_loopback_bind_without_token_is_refused() -> None:
    from swf_celery.errors import ConfigurationError
    from swf_celery.ui.security import check_bind

    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "a-token")
    with pytest.raises(ConfigurationError, match="SWF_UI_TOKEN"):
        check_bind("0.0.0.0", None)


def test_pages_use_only_the_package_assets_and_forbid_inline_script(client: Any) -> None:
    page = client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r'(src|href)="(https?:)?//', page.text)
    assert client.get("/static/console.js").status_code == 200
    assert client.get("/static/console.css").status_code == 200


def test_queues_page_counts_ready_delayed_and_oldest(client: Any, console_db: str,
                                                      celery_app: Any) -> None:
    for _ in range(3):
        celery_app.send_task("nobody.runs.this", queue="idle.jobs")
    celery_app.send_task("nobody.runs.this", queue="idle.jobs", countdown=600)
    stats = {q.name: q for q in queues.queue_stats(resolve(console_db))}["idle.jobs"]
    assert (stats.depth, stats.ready, stats.delayed, stats.held) == (4, 3, 1, 0)
    assert stats.oldest_age is not None and stats.oldest_age >= 0
    page = client.get("/queues").text
    row = re.search(r'href="/queues/idle.jobs">idle.jobs</a></td>(.*?)</tr>', page).group(1)
    assert re.findall(r"<td>([^<]*)</td>", row)[:4] == ["4", "3", "1", "0"]


def test_dead_letter_is_listed_with_its_reason_requeued_and_purged(
        client: Any, console_db: str, worker: Any, celery_app: Any, tmp_path: Path) -> None:
    db = resolve(console_db)
    done = celery_app.send_task(reject_once.name, args=[str(tmp_path / "first")])
    wait_until(lambda: queues.dead_letters(db, QUEUE), timeout=60, what="a dead letter")
    page = client.get(f"/queues/{QUEUE}").text
    row = page.split('<table class="dead-letters">')[1]
    assert f"<td>rejected</td><td>{reject_once.name}</td><td><code>{done.id}</code>" in row
    [letter] = queues.dead_letters(db, QUEUE)
    reply = client.post(f"/queues/{QUEUE}/dead-letters/requeue",
                        data={"csrf": _csrf(client, f"/queues/{QUEUE}"),
                              "ids": str(letter.msg_id)})
    assert reply.status_code == 303 and "1+dead+letter" in reply.headers["location"]
    # The first delivery stored REJECTED; the requeued message runs and overwrites it.
    wait_until(lambda: celery_app.AsyncResult(done.id).state == "SUCCESS", timeout=60,
               what="the requeued task succeeded")
    assert celery_app.AsyncResult(done.id).result == "done on the second delivery"
    assert queues.dead_letters(db, QUEUE) == []

    celery_app.send_task(reject_once.name, args=[str(tmp_path / "second")])
    wait_until(lambda: queues.dead_letters(db, QUEUE), timeout=60, what="a dead letter")
    reply = client.post(f"/queues/{QUEUE}/dead-letters/purge",
                        data={"csrf": _csrf(client, f"/queues/{QUEUE}")})
    assert reply.status_code == 303
    assert queues.dead_letters(db, QUEUE) == []
    assert client.get("/queues/no-such-queue").status_code == 404


def test_flows_and_goal_graphs_inspect_delete_and_approve(client: Any, console_db: str) -> None:
    swf.FlowBuilder.create_flow("etl_dynamic", console_db)
    swf.FlowBuilder.add_step("etl_dynamic", "load", [], console_db)
    swf.FlowBuilder.add_step("etl_dynamic", "sum", ["load"], console_db)
    assert "etl_dynamic" in client.get("/flows").text
    flow = client.get("/flows/etl_dynamic").text
    assert 'data-step="load"' in flow and 'data-from="load" data-to="sum"' in flow
    reply = client.post("/flows/etl_dynamic/delete",
                        data={"csrf": _csrf(client, "/flows/etl_dynamic")})
    assert reply.status_code == 303
    assert all(f["workflow_id"] != "etl_dynamic"
               for f in swf.FlowBuilder.list_flows(console_db))

    graph = swf.Orchestrator.decompose_goal(
        "ship <v2>", lambda goal: [{"id": "build"}, {"id": "test", "depends_on": ["build"]}],
        console_db)
    gid = str(graph["id"])
    assert "ship &lt;v2&gt;" in client.get("/goals").text
    page = client.get(f"/goals/{gid}").text
    assert 'data-from="build" data-to="test"' in page
    reply = client.post(f"/goals/{gid}/approve", data={"csrf": _csrf(client, f"/goals/{gid}")})
    assert reply.status_code == 303
    assert swf.Orchestrator.get_task_graph(gid, console_db)["approved_at"] is not None


def test_console_mounted_in_another_app_links_under_its_mount_point(console_db: str) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from swf_celery.ui import create_app

    rid = swf.Executor.start(Held, {}, console_db)
    console = create_app(console_db, allowed_hosts=["testserver"], token="t0ken")
    outer = Starlette(routes=[Mount("/ops/swf", app=console)])
    with TestClient(outer, follow_redirects=False) as tc:
        opened = tc.get("/ops/swf/", params={"token": "t0ken"})
        assert opened.status_code == 303 and opened.headers["location"] == "/ops/swf/"
        page = tc.get(f"/ops/swf/runs/{rid}").text
        links = set(re.findall(r'(?:href|src|action|data-events)="(/[^"?]*)', page))
        assert links and all(link.startswith("/ops/swf/") for link in links)
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        reply = tc.post(f"/ops/swf/runs/{rid}/cancel", data={"csrf": token})
        assert reply.headers["location"].startswith(f"/ops/swf/runs/{rid}?notice=")
        assert tc.get("/ops/swf/static/console.js").status_code == 200
    assert swf.get_run_status(rid, console_db).status == "cancelled"


def test_a_flow_page_shows_its_statistics_and_a_run_page_skips_and_replays(
        client: Any, console_db: str) -> None:
    from tests.workflows.conditional_app import Branching

    first = swf.Executor.execute(Branching, {"size": 3}, console_db)
    slug = "tests.workflows.conditional_app.Branching"
    page = client.get(f"/flows/{slug}").text
    assert "Last 24 hours" in page and "wait p50 ms" in page and "100.0%" in page
    replayed = swf.replay(first.run_id, "report", repo=console_db)
    swf.Executor.wait(replayed, console_db, timeout=30_000)
    run = client.get(f"/runs/{replayed}").text
    assert f"replay of {first.run_id[:8]}" in run and "state-skipped" in run
