-- name: bootstrap
CREATE SCHEMA IF NOT EXISTS swf;
CREATE TABLE IF NOT EXISTS swf.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: lock
SELECT pg_advisory_lock(hashtext('swf-celery:migrate'));

-- name: unlock
SELECT pg_advisory_unlock(hashtext('swf-celery:migrate'));

-- name: applied_versions
SELECT version FROM swf.schema_migrations ORDER BY version;

-- name: current_version
SELECT coalesce(max(version), 0) FROM swf.schema_migrations;

-- name: schema_exists
SELECT to_regclass('swf.schema_migrations') IS NOT NULL;

-- name: record
INSERT INTO swf.schema_migrations (version, name) VALUES (%(version)s, %(name)s);

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
