-- Queries of swf_celery/db/schema.py: what the database records of its schema.

-- name: schema_exists
SELECT to_regclass('swf.schema_migrations') IS NOT NULL;

-- name: current_version
SELECT coalesce(max(version), 0) FROM swf.schema_migrations;

-- name: functions_recorded
SELECT to_regclass('swf.schema_functions') IS NOT NULL;

-- name: function_checksums
SELECT name, checksum, code_version FROM swf.schema_functions;
