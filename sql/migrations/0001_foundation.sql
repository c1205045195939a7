-- 0001: the swf schema itself. swf.schema_migrations is created by the migration
-- runner (it must exist before any numbered file can be recorded).
COMMENT ON SCHEMA swf IS 'swf-celery: workflows, results and broker metadata';
