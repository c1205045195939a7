-- 0009: revokes that hold. Celery keeps revoked task ids in each worker's memory only, so a
-- revoked task whose message a worker held (a near ETA/countdown, a prefetched message) runs
-- after that worker restarts. The broker records every revoke broadcast here; workers load
-- the ids when they start consuming and check redelivered messages against them. Rows older
-- than the reading worker's revoke expiry (Celery's CELERY_WORKER_REVOKE_EXPIRES, 3 h by
-- default) are forgotten, as Celery forgets them in memory.
CREATE TABLE IF NOT EXISTS swf.revoked_tasks (
    task_id    text PRIMARY KEY,
    revoked_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS revoked_tasks_revoked_at ON swf.revoked_tasks (revoked_at);

-- Record a revoke of task_ids and delete their queued or delayed messages (not those a live
-- worker holds: its in-memory revoke list, and this table after a restart, handle them).
-- Returns how many messages were deleted.
CREATE OR REPLACE FUNCTION swf.task_revoke(task_ids text[]) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(task_ids) IS NULL OR cardinality(task_ids) = 0 THEN
        RETURN 0;
    END IF;
    INSERT INTO swf.revoked_tasks AS r (task_id)
    SELECT DISTINCT t FROM unnest(task_ids) AS t WHERE t IS NOT NULL
    ON CONFLICT (task_id) DO UPDATE SET revoked_at = clock_timestamp();
    RETURN swf.queue_remove_tasks(task_ids);
END $$;

-- The revokes younger than expires_s seconds, newest first (at most max_n), with their age
-- in seconds; older rows are deleted on the way.
CREATE OR REPLACE FUNCTION swf.task_revokes(expires_s double precision, max_n integer)
RETURNS TABLE (task_id text, age_s double precision)
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM swf.revoked_tasks r
     WHERE r.revoked_at < clock_timestamp() - make_interval(secs => expires_s);
    RETURN QUERY
        SELECT r.task_id, extract(epoch FROM clock_timestamp() - r.revoked_at)::double precision
          FROM swf.revoked_tasks r
         ORDER BY r.revoked_at DESC
         LIMIT max_n;
END $$;
