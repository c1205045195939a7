"""TLS and libpq parameters: ``swf://…?sslmode=…&sslrootcert=…&application_name=…`` reach
every connection the library opens — pooled, broker, wake-up and LISTEN connections of a
real worker and of its caller — checked in ``pg_stat_ssl``."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from celery import Celery, chord

import swf_celery as swf
from swf_celery import db
from swf_celery.errors import DatabaseUnavailable
from swf_celery.ops import migrate
from tests.conftest import PrivateServer, drop_database, new_database
from tests.helpers import read_log, sql, sql_value, swf_url, wait_until, worker_process
from tests.security import role_app

pytestmark = [pytest.mark.slow]


def make_certificate(folder: Path, owner: str | None = None) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (``openssl``), in ``folder``;
    the key is 0600 and both belong to the OS user ``owner`` when given."""
    crt, key = folder / "server.crt", folder / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    key.chmod(0o600)
    crt.chmod(0o644)
    if owner is not None:
        entry = pwd.getpwnam(owner)
        for path in (crt, key):
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    return crt, key


def _with_params(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + "&".join(f"{k}={v}" for k, v in params.items())


def _system_url() -> str:
    system = os.environ.get("SWF_DATABASE_URL") or os.environ.get("SWF_SECOND_DATABASE_URL")
    if not system or ":5432/" not in system:
        pytest.skip("no system PostgreSQL given (SWF_DATABASE_URL or SWF_SECOND_DATABASE_URL "
                    "on port 5432; .ci/run sets it); the embedded server's build has no SSL")
    return db.normalize_dsn(system)


@pytest.fixture(scope="module")
def system_tls() -> Iterator[tuple[str, Path | None]]:
    """The machine's PostgreSQL 15 with ``ssl=on`` for this module, back as it was after.

    Debian's snakeoil certificate when present; else, as root on the server's machine, a
    certificate made now with ``openssl`` and kept in the service folder (so a crash
    mid-test never leaves the server pointing at a missing file). Yields the server's URL
    and the certificate to verify it with (None: not verifiable, snakeoil's CN).
    """
    system = _system_url()
    with psycopg.connect(system, autocommit=True) as admin:
        ssl_on = admin.execute("SHOW ssl").fetchone()[0] == "on"  # type: ignore[index]
        data = Path(admin.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
    settings: dict[str, str] = {}
    root_crt: Path | None = None
    if not ssl_on:
        snakeoil = (Path("/etc/ssl/certs/ssl-cert-snakeoil.pem"),
                    Path("/etc/ssl/private/ssl-cert-snakeoil.key"))
        if all(p.exists() for p in snakeoil):
            settings = {"ssl_cert_file": str(snakeoil[0]), "ssl_key_file": str(snakeoil[1])}
        elif os.geteuid() == 0 and data.is_dir() and shutil.which("openssl"):
            folder = Path("/var/lib/swf-celery/system-pg-tls")
            folder.mkdir(parents=True, exist_ok=True)
            root_crt, key = make_certificate(folder, pwd.getpwuid(data.stat().st_uid).pw_name)
            settings = {"ssl_cert_file": str(root_crt), "ssl_key_file": str(key)}
        else:
            pytest.skip("the system PostgreSQL has ssl off, there is no snakeoil certificate "
                        "and we are not root on its machine with openssl: cannot turn TLS on "
                        "reversibly")
    _set_ssl(system, settings, on=True)
    try:
        yield system, root_crt
    finally:
        _set_ssl(system, settings, on=False)


def _sessions(url: str) -> list[tuple[str, bool, str]]:
    """(application_name, ssl, user) of every client session on ``url``'s database."""
    return [(name, bool(ssl), user) for name, ssl, user in sql(url, """
        SELECT a.application_name, s.ssl, a.usename
          FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = current_database() AND a.backend_type = 'client backend'
           AND a.pid <> pg_backend_pid()""")]


def test_every_connection_of_a_worker_run_uses_tls(system_tls: tuple[str, Path | None]
                                                   ) -> None:
    system, root_crt = system_tls
    database = new_database(system, None)
    try:
        migrate.migrate(database)
        verify = ({"sslmode": "verify-ca", "sslrootcert": str(root_crt)} if root_crt
                  else {"sslmode": "require"})
        url = _with_params(database, **verify, application_name="tls-app",
                           connect_timeout="10", target_session_attrs="read-write")
        _run_everything(url)
    finally:
        drop_database(system, database)


def _run_everything(url: str) -> None:
    client = Celery("tls_client", broker=swf_url(url), backend=swf_url(url),
                    set_as_current=False)
    client.conf.update(task_default_queue=role_app.QUEUE)
    events = swf.listen("workflow_events", url)
    try:
        with worker_process("tests.security.role_app", queues=[role_app.QUEUE],
                            env={"SWF_ROLE_URL": url}, extra_args=["-E"]) as proc:
            assert client.send_task("tests.security.role_app.add", (2, 3)).get(timeout=60) == 5
            header = [client.signature("tests.security.role_app.add", (i, i))
                      for i in range(3)]
            assert chord(header)(client.signature("tests.security.role_app.total")).get(
                timeout=60) == 6
            run = swf.Executor.execute(role_app.TwoSteps, {"n": 1}, url, timeout=60_000)
            assert run.output == {"second": 20}
            sessions = _sessions(url)
            names = {name for name, _ssl, _user in sessions}
            assert [s for s in sessions if not s[1]] == [], sessions
            # Every connection, LISTEN ones included, carries the URL's own name (it
            # wins over the roles' names), all over TLS.
            assert names == {"tls-app"}, names
            assert len(sessions) >= 6, sessions
            assert "permission denied" not in read_log(proc)
    finally:
        swf.unlisten(events)
        client.close()


def test_sslmode_require_reaches_the_broker_and_the_pool(private_server: PrivateServer
                                                         ) -> None:
    """The shared private server has ssl off: sslmode=require must make every path fail."""
    url = _with_params(private_server.url, sslmode="require", connect_timeout="5")
    with pytest.raises(DatabaseUnavailable, match="SSL"):
        db.resolve(url).connect().close()
    from kombu import Connection

    with Connection(swf_url(url)) as conn, pytest.raises(Exception, match="SSL"):
        conn.ensure_connection(max_retries=0)


def test_sslmode_require_to_the_system_postgresql(system_tls: tuple[str, Path | None]
                                                  ) -> None:
    url = _with_params(system_tls[0], sslmode="require")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            ).fetchone()[0] is True  # type: ignore[index]
    database = db.Database(url)
    try:
        assert database.fetch_value("SELECT ssl FROM pg_stat_ssl "
                                    "WHERE pid = pg_backend_pid()") is True
    finally:
        database.close()


def _set_ssl(url: str, settings: dict[str, str], *, on: bool) -> None:
    if not settings:
        return
    with psycopg.connect(db.normalize_dsn(url), autocommit=True) as admin:
        for name, value in settings.items():
            if on:
                admin.execute(psycopg.sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    psycopg.sql.Identifier(name), psycopg.sql.Literal(value)))
            else:
                admin.execute(psycopg.sql.SQL("ALTER SYSTEM RESET {}").format(
                    psycopg.sql.Identifier(name)))
        admin.execute("ALTER SYSTEM SET ssl = on" if on else "ALTER SYSTEM RESET ssl")
        admin.execute("SELECT pg_reload_conf()")
    # The postmaster reloads on its own time: wait until new sessions see the setting.
    wait_until(lambda: sql_value(url, "SHOW ssl") == ("on" if on else "off"),
               what=f"ssl {'on' if on else 'off'} after reload")
