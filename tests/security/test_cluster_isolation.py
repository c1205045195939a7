"""One checkout's embedded cluster cannot reach another's when root runs them: each runs as
a system user of its own, so what one cluster's superuser does as that user (``COPY … TO
PROGRAM``, ``pg_read_file``, server-side ``COPY`` to a file) stops at the other cluster's
folder. Every attack is also tried against the attacker's own cluster, where it works."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from swf_celery.ops import embedded_host, embedded_user
from tests.conftest import PrivateServer
from tests.helpers import free_port, run_cli, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: only clusters that root starts run as system users of their own "
           "(an ordinary user's clusters all run as that user)")


@dataclass
class Cluster:
    """A started embedded server of one project folder, as ``db status`` describes it."""

    server: PrivateServer
    data: Path
    pid: int
    user: pwd.struct_passwd


def _start(home: Path) -> Cluster:
    server = PrivateServer(str(home), free_port())
    server.start()
    status = json.loads(run_cli("db", "status", "--json", env=server.env).stdout)
    return Cluster(server, Path(status["data_dir"]), int(status["pid"]),
                   pwd.getpwnam(status["user"]))


@pytest.fixture(scope="module")
def two_clusters() -> Iterator[tuple[Cluster, Cluster]]:
    """Two projects' clusters: one under a folder only root may enter (as ``/root`` is),
    one under a folder anyone may traverse."""
    outer = [Path(tempfile.mkdtemp(prefix="swf-isolation-")) for _ in range(2)]
    outer[0].chmod(0o700)
    outer[1].chmod(0o755)
    started: list[Cluster] = []
    try:
        for folder in outer:
            started.append(_start(folder / "project" / ".swf"))
        yield started[0], started[1]
    finally:
        for cluster in started:
            cluster.server.remove()
        for folder in outer:
            shutil.rmtree(folder, ignore_errors=True)


def _run_as_superuser(cluster: Cluster, statement: sql.Composable) -> list[tuple[str, ...]]:
    with psycopg.connect(cluster.server.url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS out (line text)")
        conn.execute("TRUNCATE out")
        conn.execute(statement)
        return [tuple(row) for row in conn.execute("SELECT line FROM out")]


def _program_output(cluster: Cluster, command: str) -> str:
    """What ``command`` prints (stderr included) run by ``cluster``'s superuser through
    ``COPY … FROM PROGRAM``, with its exit status on the last line."""
    rows = _run_as_superuser(cluster, sql.SQL("COPY out FROM PROGRAM {}").format(
        sql.Literal(f"{command} 2>&1; echo exit=$?")))
    return "\n".join(row[0] for row in rows)


def _attacks(attacker: Cluster, target: Cluster) -> dict[str, str]:
    """Each attack of ``attacker``'s superuser on ``target``'s data directory: "ok", or
    the error it met."""
    data = target.data
    # A program fed by ``COPY … TO PROGRAM`` reads its input first: one that exits before
    # reading it races the server's write, which then fails with "Broken pipe" instead of
    # reporting the program's exit status.
    drain = "cat >/dev/null; "
    tries: dict[str, sql.Composable] = {
        "COPY TO PROGRAM cat": sql.SQL("COPY (SELECT 1) TO PROGRAM {}").format(
            sql.Literal(f"{drain}cat {data / 'PG_VERSION'}")),
        "COPY FROM PROGRAM ls": sql.SQL("COPY out FROM PROGRAM {}").format(
            sql.Literal(f"ls {data}")),
        "pg_read_file": sql.SQL("SELECT pg_read_file({})").format(
            sql.Literal(str(data / "PG_VERSION"))),
        "pg_ls_dir": sql.SQL("SELECT pg_ls_dir({})").format(sql.Literal(str(data))),
        "COPY TO file": sql.SQL("COPY (SELECT 'planted') TO {}").format(
            sql.Literal(str(data / "planted_by_copy"))),
        "COPY TO PROGRAM touch": sql.SQL("COPY (SELECT 1) TO PROGRAM {}").format(
            sql.Literal(f"{drain}touch {data / 'planted_by_program'}")),
        "COPY TO PROGRAM kill": sql.SQL("COPY (SELECT 1) TO PROGRAM {}").format(
            sql.Literal(f"{drain}kill -0 {target.pid}")),
        # The environment root started the server with, and the door to its memory.
        "pg_read_binary_file environ": sql.SQL("SELECT pg_read_binary_file({})").format(
            sql.Literal(f"/proc/{target.pid}/environ")),
    }
    outcome = {}
    for name, statement in tries.items():
        try:
            _run_as_superuser(attacker, statement)
        except psycopg.Error as exc:
            outcome[name] = str(exc)
        else:
            outcome[name] = "ok"
    return outcome


def test_each_cluster_runs_as_its_own_user_in_a_folder_of_its_own(
        two_clusters: tuple[Cluster, Cluster]) -> None:
    a, b = two_clusters
    assert a.user.pw_uid != b.user.pw_uid and a.user.pw_gid != b.user.pw_gid
    for cluster in (a, b):
        assert cluster.user.pw_name.startswith(embedded_user.USER_PREFIX)
        assert cluster.user.pw_name == f"swfpg-{cluster.data.parent.name}"
        assert len(cluster.user.pw_name) <= 32 and cluster.user.pw_shell.endswith("nologin")
        assert Path(f"/proc/{cluster.pid}").stat().st_uid == cluster.user.pw_uid
        folder = cluster.data.parent
        st = folder.lstat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert (st.st_uid, st.st_gid) == (cluster.user.pw_uid, cluster.user.pw_gid)
        assert stat.S_IMODE(cluster.data.stat().st_mode) == 0o700
        parent = folder.parent.stat()  # /var/lib/swf-celery: root's, written by root only
        assert parent.st_uid == 0 and not parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        assert os.getgrouplist(cluster.user.pw_name, cluster.user.pw_gid) == [
            cluster.user.pw_gid]


def test_a_clusters_superuser_cannot_reach_another_cluster(
        two_clusters: tuple[Cluster, Cluster]) -> None:
    a, b = two_clusters
    # Against its own cluster every attack works: the test can tell.
    own = _attacks(a, a)
    assert set(own.values()) == {"ok"}, own
    for planted in ("planted_by_copy", "planted_by_program"):
        assert (a.data / planted).stat().st_uid == a.user.pw_uid
        (a.data / planted).unlink()
    for attacker, target in ((a, b), (b, a)):
        outcome = _attacks(attacker, target)
        assert "ok" not in outcome.values(), outcome
        for name in ("pg_read_file", "pg_ls_dir", "COPY TO file",
                     "pg_read_binary_file environ"):
            assert "Permission denied" in outcome[name], (name, outcome[name])
        for name in ("COPY TO PROGRAM cat", "COPY FROM PROGRAM ls", "COPY TO PROGRAM touch",
                     "COPY TO PROGRAM kill"):
            assert "child process exited with exit code" in outcome[name], (name, outcome[name])
        # Why the programs failed, in their own words.
        for command in (f"cat {target.data / 'PG_VERSION'}", f"ls {target.data}",
                        f"touch {target.data / 'planted_by_program'}"):
            said = _program_output(attacker, command)
            assert "Permission denied" in said and not said.endswith("exit=0"), (command, said)
        said = _program_output(attacker, f"kill -0 {target.pid}")
        assert "not permitted" in said and not said.endswith("exit=0"), said
        assert not (target.data / "planted_by_copy").exists()
        assert not (target.data / "planted_by_program").exists()
    for cluster in (a, b):  # both still serve
        with psycopg.connect(cluster.server.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def _sleepers(uid: int) -> list[int]:
    """The ``sleep`` processes of ``uid`` (a process that exits meanwhile is not one)."""
    found = []
    for pid in embedded_user.processes(uid):
        try:
            command = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if command == "sleep":
            found.append(pid)
    return found


def test_remove_ends_the_users_processes_and_deletes_it(tmp_path: Path) -> None:
    cluster = _start(tmp_path / ".swf")
    try:
        # What a superuser may leave running after its statement ends.
        _run_as_superuser(cluster, sql.SQL(
            "COPY (SELECT 1) TO PROGRAM 'cat >/dev/null; nohup sleep 300 >/dev/null 2>&1 &'"))
        wait_until(lambda: _sleepers(cluster.user.pw_uid), 10, "the superuser's sleep")
    finally:
        removed = run_cli("db", "remove", env=cluster.server.env)
    assert removed.returncode == 0 and removed.stdout.strip() == "removed", removed.stderr
    assert embedded_user.find(cluster.user.pw_name) is None
    assert embedded_user.processes(cluster.user.pw_uid) == []
    assert not cluster.data.parent.exists()


def test_a_new_cluster_ends_what_an_earlier_cluster_of_its_user_left(tmp_path: Path) -> None:
    env_home = tmp_path / ".swf"
    first = _start(env_home)
    try:
        _run_as_superuser(first, sql.SQL(
            "COPY (SELECT 1) TO PROGRAM 'cat >/dev/null; nohup sleep 300 >/dev/null 2>&1 &'"))
        first.server.stop()
        # The cluster's folder is deleted by hand; its user and that process remain.
        shutil.rmtree(first.data.parent)
        assert embedded_user.processes(first.user.pw_uid)
        second = _start(env_home)
        assert second.user.pw_uid == first.user.pw_uid
        assert _sleepers(second.user.pw_uid) == []
    finally:
        run_cli("db", "remove", env=first.server.env)


def test_a_cluster_run_by_the_shared_user_of_older_versions_is_retired(tmp_path: Path) -> None:
    legacy = embedded_user.ensure(embedded_user.LEGACY_USER, Path("/nonexistent"))
    home = tmp_path / ".swf"
    folder = embedded_host.service_cluster_dir(home.resolve())
    embedded_host.SERVICE_ROOT.mkdir(mode=0o755, exist_ok=True)
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "PG_VERSION").write_text("18\n")  # as an older version left it
    for path in (folder, folder / "data", folder / "data" / "PG_VERSION"):
        os.lchown(path, legacy.pw_uid, legacy.pw_gid)
    server = PrivateServer(str(home), free_port())
    try:
        proc = run_cli("db", "start", env=server.env)
        assert proc.returncode == 0, proc.stderr
        assert f"stopping and deleting {folder}" in proc.stderr
        assert "swf-postgres, the user every root cluster shared" in proc.stderr
        st = folder.lstat()
        assert embedded_user.name_of(st.st_uid) == f"swfpg-{folder.name}"
        status = json.loads(run_cli("db", "status", "--json", env=server.env).stdout)
        assert status["running"] and status["user"] == f"swfpg-{folder.name}"
        url = run_cli("db", "url", env=server.env).stdout.strip()
        with psycopg.connect(url, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        run_cli("db", "remove", env=server.env)
        shutil.rmtree(folder, ignore_errors=True)


def test_status_names_the_user_that_runs_the_server(private_server: PrivateServer) -> None:
    human = run_cli("db", "status", env=private_server.env)
    data = json.loads(run_cli("db", "status", "--json", env=private_server.env).stdout)
    assert data["user"].startswith("swfpg-") and f"user={data['user']}" in human.stdout
    assert embedded_user.name_of(Path(f"/proc/{data['pid']}").stat().st_uid) == data["user"]
