"""The embedded server: start/stop/status in a scratch home, clear errors on conflicts."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
from pathlib import Path

import psycopg
import pytest

from swf_celery.db import redact
from tests.helpers import embedded_env, free_port, run_cli


def test_start_is_idempotent_and_stop_works(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "swf", free_port())
    first = run_cli("db", "start", env=env)
    assert first.returncode == 0, first.stderr
    try:
        masked = first.stdout.strip()
        assert ":***@" in masked
        url = run_cli("db", "url", env=env).stdout.strip()
        assert url != masked and redact(url) == masked
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == "swf"
        second = run_cli("db", "start", env=env)
        assert second.returncode == 0 and second.stdout.strip() == masked
        status = run_cli("db", "status", "--json", env=env)
        assert status.returncode == 0 and '"running": true' in status.stdout
        assert url.split("@")[0].split(":")[-1] not in status.stdout  # the password
        # The OS user that runs it: ours, or as root the cluster's own system user.
        user = json.loads(status.stdout)["user"]
        runs_as = Path(f"/proc/{json.loads(status.stdout)['pid']}").stat().st_uid
        assert pwd.getpwnam(user).pw_uid == runs_as
        assert user.startswith("swfpg-") if os.geteuid() == 0 else runs_as == os.geteuid()
    finally:
        stopped = run_cli("db", "stop", env=env)
        assert stopped.stdout.strip() == "stopped"
        assert run_cli("db", "status", env=env).returncode == 3
        run_cli("db", "remove", env=env)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = run_cli("db", "start", env=embedded_env(tmp_path / "swf", port))
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in proc.stderr
    assert "SWF_EMBEDDED_PORT" in proc.stderr


def test_stale_pid_file_is_reported_and_removed(tmp_path: Path) -> None:
    home = tmp_path / "swf"
    env = embedded_env(home, free_port())
    assert run_cli("db", "start", env=env).returncode == 0
    data = Path(json.loads(run_cli("db", "status", "--json", env=env).stdout)["data_dir"])
    run_cli("db", "stop", env=env)
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        (data / "postmaster.pid").write_text(f"{dead.pid}\n")
        with socket.socket() as sock:  # stop right after the stale-pid check
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            proc = run_cli("db", "start", env=embedded_env(home, sock.getsockname()[1]))
        assert f"removing stale {data / 'postmaster.pid'} (pid {dead.pid} is not running)" in (
            proc.stderr)
        assert not (data / "postmaster.pid").exists()
    finally:
        run_cli("db", "remove", env=env)


@pytest.mark.parametrize("value", ["abc", "80"])
def test_bad_port_setting(tmp_path: Path, value: str) -> None:
    env = dict(embedded_env(tmp_path, 1), SWF_EMBEDDED_PORT=value)
    proc = run_cli("db", "start", env=env)
    assert proc.returncode == 1 and "SWF_EMBEDDED_PORT" in proc.stderr


def test_testcontainers_path_skips_without_docker() -> None:
    if os.environ.get("SWF_TEST_CONTAINER") != "1":
        pytest.skip("SWF_TEST_CONTAINER is not 1: the container path is opt-in")
    tc = pytest.importorskip("testcontainers.postgres")
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # no engine reachable: skip with the reason
        pytest.skip(f"no Docker engine reachable ({type(exc).__name__}); container path skipped")
    with tc.PostgresContainer("ghcr.io/pgmq/pg17-pgmq:latest", driver=None) as pg:
        from swf_celery.ops import migrate

        result = migrate.migrate(pg.get_connection_url())
        assert result.pgmq in {"extension", "present"}


def test_private_server_restart_drops_connections(private_server) -> None:  # type: ignore[no-untyped-def]
    conn = psycopg.connect(private_server.url, autocommit=True)
    private_server.restart()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    with psycopg.connect(private_server.url) as fresh:
        assert fresh.execute("SELECT 1").fetchone()[0] == 1
