"""A private PgBouncer (Debian's ``pgbouncer``, ``make pgbouncer`` installs it) in
transaction pooling mode in front of a PostgreSQL URL, for the tests and the cluster bench.

Its URL carries ``listen_url`` (the direct URL), so swf-celery sends LISTEN there and
prepares nothing on pooled connections.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from swf_celery.db import with_listen_url
from swf_celery.ops import embedded_user
from tests.helpers import free_port

BINARY = "/usr/sbin/pgbouncer"
#: The system user of the test harness's own servers (PgBouncer, the cluster's
#: PostgreSQL) when run as root; no embedded cluster of a project runs as it.
HARNESS_USER = "swf-test-pg"


def harness_user() -> pwd.struct_passwd:
    """The harness's system user, made on first use."""
    return embedded_user.ensure(HARNESS_USER, Path("/nonexistent"))


def unavailable_reason() -> str | None:
    """Why no PgBouncer can run here, or None."""
    if not (os.access(BINARY, os.X_OK) or shutil.which("pgbouncer")):
        return "pgbouncer is not installed (`make pgbouncer` installs Debian's package as root)"
    return None


@contextlib.contextmanager
def pgbouncer(direct_url: str, *, listen_addr: str = "127.0.0.1", pool_size: int = 20,
              spawn: Any = None) -> Iterator[str]:
    """Run PgBouncer in front of ``direct_url``; yield the URL through it (with
    ``listen_url`` = ``direct_url``). ``spawn``: a callable starting the process (the
    cluster's, so that its cleanup ends it too)."""
    parts = urlsplit(direct_url)
    user, password = unquote(parts.username or "postgres"), unquote(parts.password or "")
    port = free_port(listen_addr)
    folder = Path(tempfile.mkdtemp(prefix="swf-pgbouncer-"))
    (folder / "userlist.txt").write_text(f'"{user}" "{password}"\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={parts.hostname} port={parts.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = {listen_addr}\nlisten_port = {port}\nunix_socket_dir =\n"
        # A server that trusts its clients (no password in the URL): PgBouncer trusts too.
        f"auth_type = {'scram-sha-256' if password else 'trust'}\n"
        f"auth_file = {folder}/userlist.txt\n"
        f"admin_users = {user}\npool_mode = transaction\nmax_client_conn = 2000\n"
        f"default_pool_size = {pool_size}\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {folder}/pgbouncer.log\n")
    args = [shutil.which("pgbouncer") or BINARY, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        user_entry = harness_user()
        for path in (folder, *folder.iterdir()):
            os.chown(path, user_entry.pw_uid, user_entry.pw_gid)
        args[1:1] = ["-u", user_entry.pw_name]
    proc = (spawn(args) if spawn else subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    try:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as sock:
                if sock.connect_ex((listen_addr, port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                log = folder / "pgbouncer.log"
                raise RuntimeError("pgbouncer did not start: " + (
                    log.read_text()[-2000:] if log.exists() else "no log"))
            time.sleep(0.05)
        netloc = parts.netloc.rsplit("@", 1)[0] + f"@{listen_addr}:{port}"
        yield with_listen_url(urlunsplit(parts._replace(netloc=netloc)), direct_url)
    finally:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
