-- Queries of swf_celery/ops/migrate.py.

-- name: bootstrap
-- The runner's own bookkeeping, created before any numbered file can be recorded: the
-- migrations applied (with each file's checksum; NULL for those applied before checksums
-- were recorded, filled in at the next migrate) and the function files applied.
CREATE SCHEMA IF NOT EXISTS swf;
CREATE TABLE IF NOT EXISTS swf.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE swf.schema_migrations ADD COLUMN IF NOT EXISTS checksum text;
CREATE TABLE IF NOT EXISTS swf.schema_functions (
    name         text PRIMARY KEY,
    checksum     text NOT NULL,
    code_version text NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now()
);

-- name: lock
SELECT pg_advisory_lock(hashtext('swf-celery:migrate'));

-- name: unlock
SELECT pg_advisory_unlock(hashtext('swf-celery:migrate'));

-- name: applied
SELECT version, name, checksum FROM swf.schema_migrations ORDER BY version;

-- name: record
INSERT INTO swf.schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: adopt_checksum
UPDATE swf.schema_migrations SET checksum = %(checksum)s
 WHERE version = %(version)s AND checksum IS NULL;

-- name: functions_setup
-- Function bodies are checked when they run, not when created (as pg_dump restores them):
-- a file may name a function another file defines.
SET LOCAL check_function_bodies = off;

-- name: stale_functions
-- Functions of schema swf that no file created or replaced in this transaction (their
-- catalog row is older than it), except those of extensions: removed from the files.
SELECT p.oid::regprocedure::text
  FROM pg_proc p
 WHERE p.pronamespace = 'swf'::regnamespace
   AND p.xmin::text::bigint <> pg_current_xact_id()::text::bigint % 4294967296
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                      AND d.deptype = 'e')
 ORDER BY 1;

-- name: function_name
SELECT %(function)s::regprocedure::text;

-- name: function_grantees
-- Roles granted EXECUTE on a function (kept when a changed result type forces a drop).
SELECT r.rolname
  FROM pg_proc p, aclexplode(p.proacl) a JOIN pg_roles r ON r.oid = a.grantee
 WHERE p.oid = %(function)s::regprocedure AND a.privilege_type = 'EXECUTE'
   AND r.oid <> p.proowner;

-- name: record_functions
INSERT INTO swf.schema_functions AS f (name, checksum, code_version)
VALUES (%(name)s, %(checksum)s, %(code_version)s)
ON CONFLICT (name) DO UPDATE
   SET checksum = excluded.checksum, code_version = excluded.code_version,
       applied_at = now()
 WHERE (f.checksum, f.code_version) IS DISTINCT FROM (excluded.checksum, excluded.code_version);

-- name: forget_functions
DELETE FROM swf.schema_functions WHERE NOT (name = ANY (%(names)s));

-- name: pgmq_extension_installed
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgmq');

-- name: pgmq_extension_available
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq');

-- name: pgmq_sql_installed
SELECT to_regclass('pgmq.meta') IS NOT NULL
   AND EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = 'pgmq' AND p.proname = 'send');

-- name: create_pgmq_extension
CREATE EXTENSION IF NOT EXISTS pgmq;
