"""Replay from a step (``swf.replay``) and execution statistics (``workflow_statistics``,
``swf-celery runs stats``), from the user's side (flows in conditional_app.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import swf_celery as swf
from swf_celery.errors import ArgumentError, RunStateError
from tests.helpers import ROOT, run_cli
from tests.workflows.conditional_app import Branching, LocalApproval, Optional, Training

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("join_run_drivers")]


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REF_FLAG_DIR", str(tmp_path))
    return tmp_path


def _calls(where: Path, step: str) -> int:
    path = where / f"calls.{step}"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_replay_reuses_everything_upstream_map_items_included(db_url: str,
                                                               calls: Path) -> None:
    first = swf.Executor.execute(Training, {"n": 4}, db_url)
    assert first.output == {"evaluate": "score 14"}
    assert (_calls(calls, "load"), _calls(calls, "square")) == (1, 4)

    new_id = swf.replay(first.run_id, from_step="train", input={"n": 4, "scale": 10},
                        repo=db_url)
    assert swf.Executor.wait(new_id, db_url, timeout=30_000).output == {
        "evaluate": "score 140"}
    # load and the 4 map items were reused; train and evaluate ran again on the new input
    assert (_calls(calls, "load"), _calls(calls, "square")) == (1, 4)
    assert (_calls(calls, "train"), _calls(calls, "evaluate")) == (2, 2)
    status = swf.get_run_status(new_id, db_url)
    assert status.replay_of == first.run_id
    assert swf.get_run_status(first.run_id, db_url).replays == [new_id]


def test_replay_from_a_map_step_runs_its_items_again(db_url: str, calls: Path) -> None:
    first = swf.Executor.execute(Training, {"n": 3}, db_url)
    new_id = swf.replay(first.run_id, "square", repo=db_url)
    assert swf.Executor.wait(new_id, db_url, timeout=30_000).output == first.output
    assert (_calls(calls, "load"), _calls(calls, "square")) == (1, 6)


def test_replay_refuses_unknown_steps_and_unfinished_runs(db_url: str) -> None:
    done = swf.Executor.execute(Training, {"n": 1}, db_url)
    with pytest.raises(ArgumentError, match="has no step 'trian'"):
        swf.replay(done.run_id, "trian", repo=db_url)
    waiting = swf.Executor.start(LocalApproval, {"title": "x"}, db_url)
    with pytest.raises(RunStateError, match="only a finished run"):
        swf.replay(waiting, "publish", repo=db_url)
    swf.cancel_workflow_run(waiting, db_url)


def test_the_cli_replays_and_shows_lineage(db_url: str, calls: Path) -> None:
    first = swf.Executor.execute(Training, {"n": 2}, db_url)
    env = dict(os.environ, SWF_DATABASE_URL=db_url, REF_FLAG_DIR=str(calls),
               PYTHONPATH=str(ROOT))
    out = run_cli("replay", first.run_id, "--from", "evaluate", database=db_url, env=env,
                  cwd=ROOT)
    assert out.returncode == 0, out.stderr
    new_id = out.stdout.split()[1]
    shown = run_cli("runs", "show", new_id, database=db_url)
    assert f"replay of {first.run_id}" in shown.stdout


def test_statistics_per_flow_and_step(db_url: str) -> None:
    for size in (50, 3, 4):
        swf.Executor.execute(Branching, {"size": size}, db_url)
    swf.Executor.execute(Optional, {"n": 1}, db_url)
    stats = {f.workflow_slug: f for f in swf.workflow_statistics(db_url)}
    branching = stats["tests.workflows.conditional_app.Branching"]
    assert (branching.runs, branching.completed, branching.success_rate) == (3, 3, 1.0)
    assert branching.p50_ms is not None and branching.max_ms >= branching.p50_ms
    steps = {s.name: s for s in branching.steps}
    assert (steps["big"].runs, steps["big"].completed, steps["big"].skipped) == (3, 1, 2)
    assert steps["measure"].attempts == 3 and steps["measure"].queue_wait_p50_ms is not None
    enrich = stats["tests.workflows.conditional_app.Optional"].steps[0]
    assert (enrich.skipped, enrich.attempts) == (1, 2)
    only = swf.workflow_statistics(db_url, workflow_slug="nope", window=60)
    assert only == []


def test_the_cli_prints_the_statistics(db_url: str) -> None:
    swf.Executor.execute(Branching, {"size": 50}, db_url)
    out = run_cli("runs", "stats", "--json", database=db_url)
    assert out.returncode == 0, out.stderr
    flow = json.loads(out.stdout)[0]
    assert flow["runs"] == 1 and [s["name"] for s in flow["steps"]] == [
        "measure", "big", "small", "audit", "report"]
    table = run_cli("runs", "stats", database=db_url, env=dict(os.environ, COLUMNS="200"))
    assert "Branching" in table.stdout and "measure" in table.stdout
