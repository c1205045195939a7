"""The embedded server is locked: a password for every login, kept from other users, and
nothing root does on start can be turned against the machine."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from swf_celery.ops import embedded_user
from tests.conftest import PrivateServer
from tests.helpers import ROOT, free_port, run_cli

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def _without_password(url: str) -> str:
    """``url`` as any local client could write it: no password, no libpq parameters."""
    scheme, rest = url.split("://", 1)
    userinfo, hostpart = rest.rsplit("@", 1)
    return f"{scheme}://{userinfo.split(':')[0]}@{hostpart.split('?')[0]}"


@pytest.fixture
def own_server() -> Iterator[PrivateServer]:
    """An embedded server of this test alone, its home under a folder only root may
    enter (mode 0700, as ``/root`` is)."""
    outer = Path(tempfile.mkdtemp(prefix="swf-locked-"))
    outer.chmod(0o700)
    server = PrivateServer(str(outer / "project" / ".swf"), free_port())
    try:
        server.start()
        yield server
    finally:
        try:
            server.remove()
        finally:
            shutil.rmtree(outer, ignore_errors=True)


def test_login_without_the_password_is_refused(private_server: PrivateServer) -> None:
    with psycopg.connect(private_server.url) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "postgres"
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(_without_password(private_server.url), connect_timeout=5)
    wrong = private_server.url.replace("@127.0.0.1", "x@127.0.0.1")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_password_file_is_private_to_its_creator(private_server: PrivateServer) -> None:
    path = Path(private_server.env["SWF_HOME"]) / "password"
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert path.read_text().strip() in private_server.url


def test_commands_print_the_password_masked(private_server: PrivateServer) -> None:
    secret = private_server.url.split("@")[0].split(":")[-1]
    for args in (["db", "start"], ["db", "status"], ["db", "status", "--json"],
                 ["version"], ["migrate"]):
        proc = run_cli(*args, env=private_server.env)
        assert secret not in proc.stdout + proc.stderr, args
    url = run_cli("db", "url", env=private_server.env)
    assert url.stdout.strip() == private_server.url and secret not in url.stderr


def _server_user(server: PrivateServer) -> pwd.struct_passwd:
    """The system user that runs ``server`` (as ``db status`` names it)."""
    return pwd.getpwnam(json.loads(run_cli("db", "status", "--json",
                                           env=server.env).stdout)["user"])


@as_root
def test_planted_symlink_is_not_followed_on_restart(own_server: PrivateServer,
                                                    tmp_path: Path) -> None:
    server_user = _server_user(own_server)
    target = tmp_path / "shadow"
    target.write_text("root's secret\n")
    target.chmod(0o600)
    before = target.stat()
    data = Path(own_server.data_dir())
    # What a local user who became the server user (COPY … TO PROGRAM) could plant.
    for name in ("planted_file", "pg_planted_dir"):
        link = data / name
        os.symlink(target if name == "planted_file" else tmp_path, link)
        os.lchown(link, server_user.pw_uid, server_user.pw_gid)
    own_server.stop()
    own_server.start()
    after = target.stat()
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (
        before.st_uid, before.st_gid, stat.S_IMODE(before.st_mode))
    assert tmp_path.stat().st_uid == 0
    with psycopg.connect(own_server.url) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


@as_root
def test_no_permission_changes_outside_the_service_folder(own_server: PrivateServer) -> None:
    home = Path(own_server.env["SWF_HOME"])
    outer = home.parents[1]
    assert stat.S_IMODE(outer.stat().st_mode) == 0o700  # untouched: no traverse bit added
    assert not Path(own_server.data_dir()).is_relative_to(home)
    with psycopg.connect(own_server.url) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


@as_root
def test_a_symlink_as_the_service_folder_is_refused(tmp_path: Path) -> None:
    from swf_celery.ops import embedded_host

    home = tmp_path / ".swf"
    cluster = embedded_host.service_cluster_dir(home.resolve())
    cluster.parent.mkdir(exist_ok=True)
    os.symlink(tmp_path, cluster)
    env = dict(os.environ, SWF_HOME=str(home), SWF_EMBEDDED_PORT=str(free_port()))
    try:
        proc = run_cli("db", "start", env=env)
        assert proc.returncode == 1
        assert (f"{cluster} is not a folder owned by swfpg-{cluster.name}: refusing"
                in proc.stderr), proc.stderr
        assert tmp_path.stat().st_uid == 0
    finally:
        cluster.unlink()
        run_cli("db", "remove", env=env)  # the cluster's user


@as_root
def test_cluster_of_an_older_version_is_retired(tmp_path: Path) -> None:
    home = tmp_path / ".swf"
    old = home / "pg" / "data"
    old.mkdir(parents=True)
    (old / "PG_VERSION").write_text("18\n")  # what an older version left in .swf/pg
    server_user = embedded_user.ensure(embedded_user.LEGACY_USER, Path("/nonexistent"))
    os.chown(old, server_user.pw_uid, server_user.pw_gid)
    env = dict(os.environ, SWF_HOME=str(home), SWF_EMBEDDED_PORT=str(free_port()))
    env.pop("SWF_DATABASE_URL", None)
    try:
        proc = run_cli("db", "start", env=env)
        assert proc.returncode == 0, proc.stderr
        assert f"stopping and deleting {old}" in proc.stderr
        assert not old.exists()
        url = run_cli("db", "url", env=env).stdout.strip()
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(_without_password(url), connect_timeout=5)
    finally:
        run_cli("db", "remove", env=env)


@as_root
def test_a_project_cloned_again_at_the_same_path_gets_a_new_cluster(tmp_path: Path) -> None:
    # The service folder is keyed by $SWF_HOME's path: deleting the project and cloning it
    # again at the same path leaves a cluster whose password file is gone.
    home = tmp_path / ".swf"
    env = dict(os.environ, SWF_HOME=str(home), SWF_EMBEDDED_PORT=str(free_port()))
    env.pop("SWF_DATABASE_URL", None)
    try:
        assert run_cli("db", "start", env=env).returncode == 0
        shutil.rmtree(home)  # the project folder is deleted; the server keeps running
        proc = run_cli("db", "start", env=env)
        assert proc.returncode == 0, proc.stderr
        assert "is gone" in proc.stderr and "a new one is initialised" in proc.stderr
        url = run_cli("db", "url", env=env).stdout.strip()
        with psycopg.connect(url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        run_cli("db", "remove", env=env)


def test_trust_authentication_is_locked_down_on_start(own_server: PrivateServer) -> None:
    data = Path(own_server.data_dir())
    trusting = "host all all 127.0.0.1/32 trust\n"
    with psycopg.connect(own_server.url, autocommit=True) as conn:
        # pg_hba.conf as an older version wrote it (written by the server user itself).
        conn.execute("CREATE TEMP TABLE hba (line text)")
        conn.execute("INSERT INTO hba VALUES (%s)", (trusting.strip(),))
        conn.execute(psycopg.sql.SQL("COPY hba TO {}").format(
            psycopg.sql.Literal(str(data / "pg_hba.conf"))))
        conn.execute("SELECT pg_reload_conf()")
    bare = _without_password(own_server.url)
    with psycopg.connect(bare, connect_timeout=5) as conn:  # anyone may log in now
        conn.execute("SELECT 1")
    old_url = own_server.url
    proc = run_cli("db", "start", env=own_server.env)
    assert proc.returncode == 0, proc.stderr
    assert "allowed logins without a password" in proc.stderr
    own_server.url = run_cli("db", "url", env=own_server.env).stdout.strip()
    assert own_server.url != old_url  # a new password
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(bare, connect_timeout=5)
    with psycopg.connect(own_server.url) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    assert json.loads(run_cli("db", "status", "--json", env=own_server.env).stdout)["running"]


def _as_user(user: str, home: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``swf-celery args…`` run as the OS user ``user`` (by the system Python, which that
    user can run; the packages come from this virtualenv)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home.parent), "SWF_HOME": str(home),
           "SWF_EMBEDDED_PORT": str(port), "PYTHONPATH": f"{SITE}:{ROOT}"}
    return subprocess.run(["runuser", "-u", user, "--", "/usr/bin/env", *(
        f"{k}={v}" for k, v in env.items()), SYSTEM_PYTHON, "-m", "swf_celery.cli", *args],
        capture_output=True, text=True, timeout=120, cwd="/")


SYSTEM_PYTHON = "/usr/bin/python3"
#: This virtualenv's packages, which the other user imports.
SITE = Path(next(p for p in sys.path if p.endswith("site-packages")))


def _system_python_fits() -> bool:
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return False
    return out == str(tuple(sys.version_info[:2]))


@as_root
def test_an_ordinary_users_server_is_theirs_alone(tmp_path: Path) -> None:
    """The path of every developer who is not root: the cluster in .swf/pg, the password
    readable by its creator only; a trust cluster of an older version is locked down."""
    if shutil.which("runuser") is None or not _system_python_fits():
        pytest.skip("needs runuser and a system Python of this version to run as another user")
    from swf_celery.ops.embedded_host import others_may_enter

    if not (others_may_enter(ROOT) and others_may_enter(SITE)):
        pytest.skip(f"the project ({ROOT}) or its virtualenv is in a folder other users "
                    "cannot enter: another user cannot import it (CI's clone can)")
    for user in ("nobody", "daemon"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.skip(f"no OS user {user!r} to run as")
    owner = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="swf-user-"))
    base.chmod(0o755)
    os.chown(base, owner.pw_uid, owner.pw_gid)
    home, port = base / ".swf", free_port()
    try:
        started = _as_user("nobody", home, port, "db", "start")
        assert started.returncode == 0, started.stderr
        secret = home / "password"
        assert (secret.stat().st_uid, stat.S_IMODE(secret.stat().st_mode)) == (owner.pw_uid,
                                                                               0o600)
        assert (home / "pg" / "data" / "PG_VERSION").exists()
        url = _as_user("nobody", home, port, "db", "url").stdout.strip()
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(_without_password(url), connect_timeout=5)
        other = _as_user("daemon", home, port, "db", "url")
        assert other.returncode == 1
        assert "not readable by this user" in other.stderr
        # A cluster an older version made: trust in pg_hba.conf, no password file.
        assert _as_user("nobody", home, port, "db", "stop").returncode == 0
        hba = home / "pg" / "data" / "pg_hba.conf"
        hba.write_text("host all all 127.0.0.1/32 trust\n")
        secret.unlink()
        relocked = _as_user("nobody", home, port, "db", "start")
        assert relocked.returncode == 0, relocked.stderr
        assert "allowed logins without a password" in relocked.stderr
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(_without_password(url), connect_timeout=5)
        fresh = _as_user("nobody", home, port, "db", "url").stdout.strip()
        with psycopg.connect(fresh) as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
    finally:
        _as_user("nobody", home, port, "db", "remove")
        shutil.rmtree(base, ignore_errors=True)


def test_cluster_files_are_read_without_following_symlinks(tmp_path: Path) -> None:
    from swf_celery.ops.embedded_host import read_small

    (tmp_path / "pg_hba.conf").write_text("host all all 127.0.0.1/32 scram-sha-256\n")
    assert "scram" in read_small(tmp_path / "pg_hba.conf")
    os.symlink("/dev/zero", tmp_path / "planted")
    os.mkfifo(tmp_path / "fifo")
    for name in ("planted", "fifo"):
        with pytest.raises(OSError):
            read_small(tmp_path / name)
