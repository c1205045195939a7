"""The doctor on a run whose worker was SIGKILLed with the step's message in hand: a real
`celery worker` subprocess (visibility timeout 9 s: held messages are extended every 3 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from swf_celery.db import resolve
from swf_celery.ops.doctor import Limits, explain_run
from swf_celery.workflows import coordinator, definition, steps
from tests.helpers import kill_worker, sql_value, wait_until, worker_process

pytestmark = [pytest.mark.db, pytest.mark.slow]

VT = 9.0


def test_a_worker_killed_with_a_message_in_hand(db_url: str, tmp_path: Path) -> None:
    from tests.workflows import engine_app

    wf = definition.build("doctor.killed", [(
        "work", engine_app.sleepy, steps.parse_options({"queue": "doctor_kill"}, where="t"))])
    env = {"SWF_DATABASE_URL": db_url, "SWF_TEST_VT": str(VT)}
    with worker_process("tests.workflows.engine_app", queues=["doctor_kill"], env=env,
                        concurrency=1) as proc:
        run_id = str(coordinator.start_run(resolve(db_url), wf, {
            "counter": str(tmp_path / "attempts"), "sleep": 120}))
        wait_until(lambda: sql_value(db_url, "SELECT status FROM swf.step_tasks "
                                             "WHERE run_id = %s", (run_id,)) == "started",
                   what="the step to start")
        limits = Limits(stalled_after=0, visibility_timeout=VT)
        [running] = explain_run(run_id, db_url, limits=limits)
        assert running.check == "step_running" and running.severity == "info"
        kill_worker(proc)

        def gone() -> object:
            found = explain_run(run_id, db_url, limits=limits)
            return found and found[0].check == "held_by_gone_worker" and found[0]

        finding = wait_until(gone, timeout=VT, what="the doctor to see the worker gone")
    assert finding.severity == "warning" and finding.subject == f"run {run_id}"
    assert "step work attempt 1" in finding.summary and "worker is gone" in finding.summary
    assert "runs again" in finding.remedy
