"""The wheel carries transport/, sql/ and every package's queries inside the package, found
via importlib.resources; requirements.lock pins everything pyproject.toml asks for."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from swf_celery.ops import migrate
from tests.helpers import ROOT


def test_installed_package_finds_its_sql_files() -> None:
    sql = files("swf_celery.sql")
    assert "0001_foundation.sql" in {entry.name for entry in sql.joinpath("migrations").iterdir()}
    assert "workflows.sql" in {entry.name for entry in sql.joinpath("functions").iterdir()}
    versions = [m.version for m in migrate.available()]
    assert versions == sorted(versions) and versions[0] == 1


def test_non_editable_install_ships_sql_and_transport(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(ROOT)],
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
        "assert files('swf_celery.ui').joinpath('static/console.css').is_file(); "
        "print(sorted(e.name for d in ('migrations', 'functions') "
        "for e in files('swf_celery.sql').joinpath(d).iterdir() if e.name.endswith('.sql')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(target)], cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        check=True, capture_output=True, text=True,
    ).stdout
    assert "0001_foundation.sql" in out and "workflows.sql" in out
    assert (target / "swf_celery" / "transport" / "__init__.py").exists()


def _locked() -> dict[str, list[tuple[str, str, int]]]:
    """requirements.lock as {name: [(version, marker, number of hashes)]}."""
    text = (ROOT / "requirements.lock").read_text()
    pins: dict[str, list[tuple[str, str, int]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = block.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        spec, _, marker = head.partition(";")
        name, _, version = spec.strip().partition("==")
        assert version, f"requirements.lock: {head!r} is not pinned with =="
        pins.setdefault(canonicalize_name(name), []).append(
            (version, marker.strip(), block.count("--hash=sha256:")))
    return pins


def test_the_lock_pins_every_requirement_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"],
              *(r for extra in project["project"]["optional-dependencies"].values()
                for r in extra),
              *project["dependency-groups"]["build"]]
    pins = _locked()
    assert all(hashes for versions in pins.values() for _, _, hashes in versions)
    environment = default_environment()
    for line in wanted:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        here = [v for v, marker, _ in pins.get(canonicalize_name(req.name), [])
                if not marker or Marker(marker).evaluate(environment)]
        assert here, f"{req.name} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(here[0], prereleases=True), (
            f"requirements.lock pins {req.name}=={here[0]}, outside {req.specifier} of "
            "pyproject.toml: run `make lock`")
