"""`make chaos` for three minutes (run by `make test-long`): a mixed workload on three real
workers and a private PostgreSQL under seeded faults loses nothing and strands no run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.long, pytest.mark.slow]


@pytest.mark.timeout(1200)
def test_three_minutes_of_chaos_lose_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.chaos", "--minutes", "3",
                           "--seed", "1", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1100)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["tasks"]["lost"] == 0, report["examples"]
    assert report["runs"]["stranded"] == 0, report["examples"]
    assert report["chords"]["fired"] == report["chords"]["published"]
    assert report["revoked"]["ran"] == 0, report["examples"]
    assert report["messages"]["lost"] == 0
    assert not report["dead_rows_after_vacuum"]
    assert sum(report["faults"].values()) >= 5
    assert proc.returncode == 0, proc.stdout[-3000:]
