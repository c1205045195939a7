"""Smoke test: the goal_to_dag example runs end to end as a user would run it."""

from __future__ import annotations

import os

from tests.helpers import ROOT, run_module


def test_goal_to_dag_example(db_url: str) -> None:
    proc = run_module("examples.goal_to_dag.run", "Train a churn model", "--yes", cwd=ROOT,
                      env=dict(os.environ, SWF_DATABASE_URL=db_url, COLUMNS="200"), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "prepare.clean" in proc.stdout          # the preview shows flattened subtasks
    assert "completed: {'report':" in proc.stdout
