"""Upgrades: a version-12 database with rows in every table, drift refused, functions kept current.

``tests/fixtures/schema_v12.sql`` is a schema-and-data dump of a database that release 12 made
(``tests/fixtures/make_schema_v12.py``). Restored and migrated by this code, its catalog must
equal a fresh database's, and nothing in it may be lost.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kombu import Connection

from swf_celery.db import schema
from swf_celery.errors import MigrationDrift, SchemaNotMigrated
from swf_celery.ops import migrate
from tests.helpers import broker_url, error_lines, run_cli, sql, sql_value

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "schema_v12.sql"

#: The swf catalog a migration must reproduce: (kind, name, definition) rows.
CATALOG = """
SELECT 'table', c.relname, c.relkind::text || c.relpersistence::text || coalesce(c.relacl::text, '')
  FROM pg_class c WHERE c.relnamespace = 'swf'::regnamespace AND c.relkind IN ('r', 'v', 'S')
UNION ALL
SELECT 'column', a.attrelid::regclass::text || '.' || a.attname,
       a.attnum || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull || ' '
       || a.attidentity::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = 'swf'::regnamespace AND c.relkind = 'r' AND a.attnum > 0
   AND NOT a.attisdropped
UNION ALL
SELECT 'index', indexrelid::regclass::text, pg_get_indexdef(indexrelid)
  FROM pg_index WHERE indrelid IN (SELECT oid FROM pg_class
                                    WHERE relnamespace = 'swf'::regnamespace)
UNION ALL
SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'swf'::regnamespace
UNION ALL
SELECT 'trigger', tgrelid::regclass::text || '.' || tgname, pg_get_triggerdef(oid)
  FROM pg_trigger WHERE NOT tgisinternal
   AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'swf'::regnamespace)
UNION ALL
SELECT 'function', p.oid::regprocedure::text,
       pg_get_functiondef(p.oid) || ' secdef=' || p.prosecdef || ' config='
       || coalesce(p.proconfig::text, '') || ' acl=' || coalesce(p.proacl::text, '')
  FROM pg_proc p WHERE p.pronamespace = 'swf'::regnamespace
UNION ALL
SELECT 'comment', objoid::regclass::text || '.' || objsubid, description
  FROM pg_description
 WHERE objoid IN (SELECT oid FROM pg_class WHERE relnamespace = 'swf'::regnamespace)
ORDER BY 1, 2
"""

#: Columns later migrations added to tables of version 12, with the values they start with.
ADDED = {"flows": ["last_used_at"], "chords": ["expired_at"],
         "runs": ["lease_owner", "lease_until", "replay_of"],
         "step_states": ["function_ref", "condition", "run_on_skip", "on_exhausted", "wait_for",
                         "wait_until", "wait_seconds", "due_at"]}


def _rows(url: str, table: str, *, without: list[str] | None = None) -> list[str]:
    """The rows of ``swf.<table>`` as JSON, sorted: to compare before and after an upgrade."""
    return [row[0] for row in sql(url, f"SELECT (to_jsonb(t) - %s::text[])::text "
                                       f"FROM swf.{table} t ORDER BY 1", (without or [],))]


def _catalog(url: str) -> list[tuple[Any, ...]]:
    return sql(url, CATALOG)


def _restore_v12(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(FIXTURE.read_text(encoding="utf-8").encode())


def _tables(url: str) -> list[str]:
    return [row[0] for row in sql(url, "SELECT relname FROM pg_class WHERE relkind = 'r' AND "
                                       "relnamespace = 'swf'::regnamespace ORDER BY 1")]


def test_a_version_12_database_upgrades_in_place_to_the_fresh_catalog(
        empty_db_url: str, db_url: str) -> None:
    _restore_v12(empty_db_url)
    assert sql_value(empty_db_url, "SELECT max(version) FROM swf.schema_migrations") == 12
    before = {table: _rows(empty_db_url, table) for table in _tables(empty_db_url)}
    assert all(before.values()), [t for t, rows in before.items() if not rows]
    dead = sql(empty_db_url, "SELECT q.name, count(*) FROM swf.queues q, LATERAL ("
                             "SELECT 1 FROM swf.transient_archive a WHERE a.queue = q.name AND "
                             "a.headers ? 'dead_letter') d GROUP BY 1")

    result = migrate.migrate(empty_db_url)

    # Every migration shipped after 12 (numbers are assigned per branch: gaps may exist).
    assert result.applied == [m.version for m in schema.migrations() if m.version > 12]
    assert _catalog(empty_db_url) == _catalog(db_url)
    # Nothing lost: every row is still there, except dead letters, which moved to their store.
    for table, rows in before.items():
        if table in {"schema_migrations", "queues", "transient_archive"}:
            continue
        after = _rows(empty_db_url, table, without=ADDED.get(table))
        if table == "channels":  # 0020 adds the engine's events channel
            after = [r for r in after if '"channel": "workflow_events"' not in r]
        assert after == rows, table
    # The added columns start from what the rows say: a flow was last used when it was
    # created, given a step or last run; no chord has expired pending.
    assert sql(empty_db_url, "SELECT count(*) FROM swf.flows f WHERE last_used_at <> greatest("
                             "created_at, (SELECT max(created_at) FROM swf.flow_steps s WHERE "
                             "s.flow_id = f.id), (SELECT max(inserted_at) FROM swf.runs r "
                             "WHERE r.flow_id = f.id))") == [(0,)]
    assert sql(empty_db_url, "SELECT count(*) FROM swf.chords WHERE expired_at IS NOT NULL") \
        == [(0,)]
    assert sql_value(empty_db_url, "SELECT count(*) FROM swf.queues") == len(before["queues"])
    moved = dict(sql(empty_db_url, "SELECT queue, count(*) FROM swf.dead_letters "
                                   "WHERE queue LIKE '%%pidbox' GROUP BY 1"))
    assert moved == dict(dead)
    assert sql_value(empty_db_url, "SELECT count(*) FROM swf.dead_letters") >= 2
    assert sql(empty_db_url, "SELECT DISTINCT storage FROM swf.queues ORDER BY 1") == [
        ("pgmq",), ("transient",)]
    # The upgraded database works: its queues take, give and dead-letter messages.
    with Connection(broker_url(empty_db_url)) as conn:
        queue = conn.SimpleQueue("celery")
        queue.put({"after": "upgrade"})
        got = queue.get(timeout=10)
        got.reject()
        queue.close()
    reasons = [r[0] for r in sql(empty_db_url,
                                 "SELECT reason FROM swf.queue_dead_letters('celery')")]
    assert "rejected" in reasons
    assert migrate.check(empty_db_url) == migrate.latest_version()


def test_an_edited_migration_is_refused_naming_it(db_url: str) -> None:
    sql(db_url, "UPDATE swf.schema_migrations SET checksum = repeat('0', 64) WHERE version = 4")
    with pytest.raises(MigrationDrift, match=r"0004_workflows.*never edited"):
        migrate.migrate(db_url)
    proc = run_cli("migrate", database=db_url)
    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr)
    assert line.startswith("error: migration 0004_workflows was applied from a different file")


def test_checksums_of_migrations_applied_before_they_were_recorded_are_adopted(
        db_url: str) -> None:
    sql(db_url, "UPDATE swf.schema_migrations SET checksum = NULL")
    migrate.migrate(db_url)
    recorded = dict(sql(db_url, "SELECT version, checksum FROM swf.schema_migrations"))
    assert recorded == {m.version: m.checksum for m in migrate.available()}


def test_older_functions_are_refused_by_workers_and_the_cli_until_migrate(db_url: str) -> None:
    sql(db_url, "UPDATE swf.schema_functions SET checksum = 'older' WHERE name = 'workflows'")
    with pytest.raises(SchemaNotMigrated, match=r"functions/workflows.sql.*swf-celery migrate"):
        migrate.check(db_url)
    with pytest.raises(SchemaNotMigrated, match="swf-celery migrate"), \
            Connection(broker_url(db_url)) as conn:
        conn.connect()
    proc = run_cli("runs", "list", "--json", database=db_url)
    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr)
    assert "stored functions are older than this code" in line and "swf-celery migrate" in line

    assert json.loads(run_cli("migrate", "--json", database=db_url).stdout)["applied"] == []
    assert migrate.check(db_url) == migrate.latest_version()
    assert run_cli("runs", "list", "--json", database=db_url).returncode == 0


def test_functions_of_a_newer_release_are_accepted_during_a_rolling_upgrade(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    sql(db_url, "UPDATE swf.schema_functions SET checksum = 'newer', code_version = '999.0'")
    assert migrate.check(db_url) == migrate.latest_version()
    assert "newer than this code" in caplog.text


def test_migrate_drops_removed_functions_and_keeps_grants_of_redefined_ones(
        db_url: str) -> None:
    role = f"swf_grantee_{os.getpid()}"
    sql(db_url, f"DROP ROLE IF EXISTS {role}")
    sql(db_url, f"CREATE ROLE {role}")
    try:
        sql(db_url, "CREATE FUNCTION swf.obsolete_helper() RETURNS integer "
                    "LANGUAGE sql AS 'SELECT 1'")
        # A release whose function returned another type: CREATE OR REPLACE cannot change it.
        sql(db_url, "DROP FUNCTION swf.queue_size(text)")
        sql(db_url, "CREATE FUNCTION swf.queue_size(p_queue text) RETURNS integer "
                    "LANGUAGE sql AS 'SELECT 0'")
        sql(db_url, f"GRANT EXECUTE ON FUNCTION swf.queue_size(text) TO {role}")
        result = migrate.migrate(db_url)
        assert result.dropped == ("swf.obsolete_helper()",)
        assert sql_value(db_url, "SELECT prorettype::regtype::text FROM pg_proc "
                                 "WHERE oid = 'swf.queue_size(text)'::regprocedure") == "bigint"
        assert sql_value(db_url, "SELECT has_function_privilege(%s, 'swf.queue_size(text)', "
                                 "'EXECUTE')", (role,))
        assert migrate.check(db_url) == migrate.latest_version()
    finally:
        sql(db_url, f"REVOKE ALL ON FUNCTION swf.queue_size(text) FROM {role}")
        sql(db_url, f"DROP ROLE IF EXISTS {role}")
