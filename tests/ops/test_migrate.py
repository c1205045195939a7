"""Migrations: pgmq installed, files applied once, concurrency, version checks, privileges."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest

from swf_celery.errors import DatabasePermissionError, SchemaTooNew
from swf_celery.ops import migrate
from tests.helpers import as_role, error_lines, run_cli, start_cli


def test_migrate_installs_pgmq_and_records_versions(empty_db_url: str) -> None:
    result = migrate.migrate(empty_db_url)
    assert result.applied == [m.version for m in migrate.available()]
    assert result.pgmq in {"extension", "sql"}
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("SELECT pgmq.create('probe')")
        msg_id = conn.execute("SELECT * FROM pgmq.send('probe', '{\"a\": 1}')").fetchone()[0]
        assert msg_id == 1
    again = migrate.migrate(empty_db_url)
    assert again.applied == [] and again.pgmq == "present"
    assert migrate.check(empty_db_url) == migrate.latest_version()


def test_two_concurrent_migrations_both_succeed(empty_db_url: str) -> None:
    procs = [start_cli("migrate", "--json", database=empty_db_url) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    applied = sorted(len(json.loads(out)["applied"]) for out, _ in outs)
    assert applied == [0, len(migrate.available())]
    with psycopg.connect(empty_db_url) as conn:
        count = conn.execute("SELECT count(*) FROM swf.schema_migrations").fetchone()[0]
    assert count == len(migrate.available())


def test_newer_database_is_refused(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO swf.schema_migrations (version, name) VALUES (9999, 'future')")
    with pytest.raises(SchemaTooNew, match="9999.*upgrade swf-celery"):
        migrate.migrate(db_url)
    proc = run_cli("migrate", database=db_url)
    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr)
    assert line.startswith("error: database schema is at version 9999")


def test_role_without_create_privilege_gets_a_clear_error(empty_db_url: str) -> None:
    role = f"swf_noprivs_{os.getpid()}"
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'role-secret'")
        conn.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}")
    try:
        url = as_role(empty_db_url, role, "role-secret")
        with pytest.raises(DatabasePermissionError, match="GRANT CREATE ON DATABASE"):
            migrate.migrate(url)
    finally:
        from swf_celery import db

        db.resolve(as_role(empty_db_url, role, "role-secret")).close()
        with psycopg.connect(empty_db_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,))
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_cli_bad_url_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("migrate", database="postgresql://x@127.0.0.1:1/x", cwd=tmp_path)
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach PostgreSQL"), lines
