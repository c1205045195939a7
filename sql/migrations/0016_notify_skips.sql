-- 0016: the count of NOTIFYs skipped because PostgreSQL's notification queue was too full
-- (swf.notify_hint, sql/functions/notifications.sql). A sequence, not a row: counting never
-- waits on a row lock, and a skip stays counted when its transaction rolls back. Listeners
-- read it to report a gap; swf_celery.db.notification_health reports it.

CREATE SEQUENCE swf.notify_skips AS bigint;
COMMENT ON SEQUENCE swf.notify_skips IS
    'NOTIFYs skipped while the notification queue was over swf.notify_queue_limit()';

-- Roles granted a part before this release send NOTIFYs from their own sessions (results,
-- channel messages) and listen: they count skips and read the count.
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT r.role FROM swf.roles r
                   WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.role) LOOP
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE swf.notify_skips TO %I', v_role);
    END LOOP;
END $$;
