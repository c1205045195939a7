"""Which database a command uses is said on stderr (password masked, with its source), and
no command but ``swf-celery db start`` starts the embedded server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import embedded_env, error_lines, free_port, run_cli


@pytest.mark.parametrize("args", [["migrate"], ["version"], ["runs", "list"],
                                  ["cancel", "00000000-0000-0000-0000-000000000001"],
                                  ["send", "orders", "{}"], ["grant", "x", "--worker"]])
def test_no_database_and_no_running_server_is_a_clear_error(tmp_path: Path,
                                                            args: list[str]) -> None:
    home = tmp_path / ".swf"
    proc = run_cli(*args, env=embedded_env(home, free_port()))
    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr)
    assert line == ("error: no database given: pass a DSN, set SWF_DATABASE_URL, or start the "
                    "embedded server with `swf-celery db start`")
    assert not (home / "password").exists()  # nothing was started or initialised


def test_commands_name_their_database_and_its_source(db_url: str,
                                                     private_server) -> None:  # noqa: ANN001
    env = dict(os.environ, SWF_DATABASE_URL=db_url)
    proc = run_cli("version", env=env)
    assert proc.returncode == 0, proc.stderr
    masked = proc.stderr.splitlines()[0]
    assert masked.startswith("database: ") and masked.endswith("(from $SWF_DATABASE_URL)")
    assert db_url.rsplit("/", 1)[1] in masked
    proc = run_cli("version", env=private_server.env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0] == (
        f"database: postgresql://postgres:***@127.0.0.1:{private_server.port}/swf"
        "?require_auth=scram-sha-256 (from embedded server)")
