"""The console in a real browser (Playwright driving Debian's Chromium) with a real worker:
the DAG shows every step, steps turn completed without a reload, pause and resume from the
page change the run, a dead letter is requeued from the page.

Skipped, saying why, without Playwright or ``/usr/bin/chromium`` (``make chromium``).
Screenshots go to ``$SWF_CONSOLE_SCREENSHOTS`` (``docs/img`` refreshes the README's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import swf_celery as swf
from swf_celery.db import resolve
from swf_celery.ui import queues
from tests.helpers import wait_until
from tests.ui.console_app import QUEUE, Report, reject_once

pytestmark = pytest.mark.slow

STEPS = ["fetch", "parse", "enrich", "publish"]


def _open_live(page: Any, url: str) -> None:
    """Open a page and wait until its event stream is listening."""
    page.goto(url)
    page.wait_for_selector('body[data-live="1"]')


def test_dag_shows_every_step_and_steps_turn_completed_live(
        page: Any, live_console: str, console_db: str, worker: Any, screenshots: Path) -> None:
    run_id = swf.Executor.start(Report, {"sleep": 0.6}, console_db)
    swf.pause_workflow_run(run_id, console_db)  # nothing new starts before the page listens
    _open_live(page, f"{live_console}/runs/{run_id}")
    drawn = page.eval_on_selector_all("svg.dag g.step", "els => els.map(e => e.dataset.step)")
    assert sorted(drawn) == sorted(STEPS)
    assert page.locator("svg.dag path.edge").count() == 4
    assert page.locator('svg.dag g.step[data-step="publish"].state-completed').count() == 0
    page.evaluate("window.sameDocument = true")  # gone if the page reloads

    swf.resume_workflow_run(run_id, console_db)
    page.wait_for_selector('svg.dag g.step[data-step="publish"].state-completed')
    page.wait_for_selector("#run-status .badge.state-completed")
    assert page.evaluate("window.sameDocument") is True
    for step in STEPS:
        assert page.locator(f'svg.dag g.step[data-step="{step}"].state-completed').count() == 1
    page.goto(f"{live_console}/runs/{run_id}?step=fetch#step")
    page.screenshot(path=str(screenshots / "console-run.png"), full_page=True)


def test_runs_list_shows_a_new_run_without_a_reload(
        page: Any, live_console: str, console_db: str, worker: Any, screenshots: Path) -> None:
    _open_live(page, f"{live_console}/")
    page.evaluate("window.sameDocument = true")
    run_id = swf.Executor.start(Report, {"sleep": 0}, console_db)
    page.wait_for_selector(f'table.runs a[href="/runs/{run_id}"]')
    page.wait_for_selector(f'table.runs tr:has(a[href="/runs/{run_id}"]) .state-completed')
    assert page.evaluate("window.sameDocument") is True
    page.set_viewport_size({"width": 1280, "height": 480})
    page.screenshot(path=str(screenshots / "console-runs.png"))


def test_pause_and_resume_from_the_page_change_the_run(
        page: Any, live_console: str, console_db: str, worker: Any) -> None:
    run_id = swf.Executor.start(Report, {"sleep": 1.5}, console_db)
    _open_live(page, f"{live_console}/runs/{run_id}")
    page.click("form.pause button")
    page.wait_for_selector("#run-status .badge.state-paused")
    assert swf.get_run_status(run_id, console_db).status == "paused"
    assert page.locator("form.resume button").count() == 1

    page.click("form.resume button")
    page.wait_for_selector("#run-status .badge.state-completed")  # live, after the resume
    assert swf.get_run_status(run_id, console_db).status == "completed"


def test_dead_letter_is_requeued_from_the_page(
        page: Any, live_console: str, console_db: str, worker: Any, celery_app: Any,
        tmp_path: Path, screenshots: Path) -> None:
    db = resolve(console_db)
    sent = celery_app.send_task(reject_once.name, args=[str(tmp_path / "marker")])
    wait_until(lambda: queues.dead_letters(db, QUEUE), timeout=60, what="a dead letter")

    for _ in range(3):  # a queue nobody consumes: depth, delayed and age to show
        celery_app.send_task("reports.nightly", queue="reports")
    celery_app.send_task("reports.nightly", queue="reports", countdown=3600)

    page.goto(f"{live_console}/queues")
    row = page.locator("table.queues tr", has=page.locator(f'a:text-is("{QUEUE}")'))
    assert row.locator("a.dead").inner_text() == "1"
    idle = page.locator("table.queues tr", has=page.locator('a:text-is("reports")'))
    assert idle.locator("td").all_inner_texts()[1:5] == ["4", "3", "1", "0"]
    page.set_viewport_size({"width": 1280, "height": 300})
    page.screenshot(path=str(screenshots / "console-queues.png"))

    row.locator(f'a:text-is("{QUEUE}")').click()
    letter = page.locator("table.dead-letters tbody tr")
    assert letter.count() == 1 and "rejected" in letter.inner_text()
    page.set_viewport_size({"width": 1280, "height": 420})
    page.screenshot(path=str(screenshots / "console-dead-letters.png"))
    letter.locator("form.requeue button").click()
    page.wait_for_selector("p.notice:has-text('1 dead letter(s) requeued')")
    wait_until(lambda: celery_app.AsyncResult(sent.id).state == "SUCCESS", timeout=60,
               what="the requeued task ran")
    assert page.locator("table.dead-letters").count() == 0
