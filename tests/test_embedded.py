"""The embedded server: start/stop/status in a scratch home, clear errors on conflicts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

CLI = [sys.executable, "-m", "swf_celery.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(home: Path, port: int) -> dict[str, str]:
    env = dict(os.environ, SWF_HOME=str(home), SWF_EMBEDDED_PORT=str(port))
    env.pop("SWF_DATABASE_URL", None)
    return env


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=120)


def test_start_is_idempotent_and_stop_works(tmp_path: Path) -> None:
    env = _env(tmp_path / "swf", _free_port())
    first = _cli(["db", "start"], env)
    assert first.returncode == 0, first.stderr
    try:
        url = first.stdout.strip()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == "swf"
        second = _cli(["db", "start"], env)
        assert second.returncode == 0 and second.stdout.strip() == url
        status = _cli(["db", "status", "--json"], env)
        assert status.returncode == 0 and '"running": true' in status.stdout
    finally:
        stopped = _cli(["db", "stop"], env)
    assert stopped.stdout.strip() == "stopped"
    assert _cli(["db", "status"], env).returncode == 3


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = _cli(["db", "start"], _env(tmp_path / "swf", port))
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in proc.stderr
    assert "SWF_EMBEDDED_PORT" in proc.stderr


def test_stale_pid_file_is_reported_and_removed(tmp_path: Path) -> None:
    home = tmp_path / "swf"
    data = home / "pg" / "data"
    data.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (data / "postmaster.pid").write_text(f"{dead.pid}\n")
    with socket.socket() as sock:  # stop right after the stale-pid check
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        proc = _cli(["db", "start"], _env(home, sock.getsockname()[1]))
    assert f"removing stale {data / 'postmaster.pid'} (pid {dead.pid} is not running)" in (
        proc.stderr)
    assert not (data / "postmaster.pid").exists()


@pytest.mark.parametrize("value", ["abc", "80"])
def test_bad_port_setting(tmp_path: Path, value: str) -> None:
    env = dict(_env(tmp_path, 1), SWF_EMBEDDED_PORT=value)
    proc = _cli(["db", "start"], env)
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
        from swf_celery import migrate

        result = migrate.migrate(pg.get_connection_url())
        assert result.pgmq in {"extension", "present"}


def test_private_server_restart_drops_connections(private_server) -> None:  # type: ignore[no-untyped-def]
    conn = psycopg.connect(private_server.url, autocommit=True)
    private_server.restart()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    with psycopg.connect(private_server.url) as fresh:
        assert fresh.execute("SELECT 1").fetchone()[0] == 1
