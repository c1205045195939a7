"""The wheel carries transport/, sql/ and every package's queries inside the package, found
via importlib.resources."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files
from pathlib import Path

from swf_celery.ops import migrate
from tests.helpers import ROOT


def test_installed_package_finds_its_sql_files() -> None:
    names = {entry.name for entry in files("swf_celery.sql").iterdir()}
    assert "0001_foundation.sql" in names
    versions = [m.version for m in migrate.available()]
    assert versions == sorted(versions) and versions[0] == 1


def test_non_editable_install_ships_sql_and_transport(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    probe = (
        "import sys; from importlib.resources import files; "
        "import swf_celery, swf_celery.transport; "
        # Every module that loads a .sql file at import: the wheel must carry them all.
        "import swf_celery.transport.transport, swf_celery.results.backend, "
        "swf_celery.workflows.lifecycle, swf_celery.messaging.send, "
        "swf_celery.goals.orchestrator, swf_celery.ops.canvas, swf_celery.ops.migrate, "
        "swf_celery.ops.redis_drain, swf_celery.cli; "
        "assert swf_celery.__file__.startswith(sys.argv[1]), swf_celery.__file__; "
        "print(sorted(e.name for e in files('swf_celery.sql').iterdir() "
        "if e.name.endswith('.sql')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(target)], cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        check=True, capture_output=True, text=True,
    ).stdout
    assert "0001_foundation.sql" in out
    assert (target / "swf_celery" / "transport" / "__init__.py").exists()
