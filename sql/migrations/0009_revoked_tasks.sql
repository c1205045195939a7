-- 0009: revokes that hold. Celery keeps revoked task ids in each worker's memory only, so a
-- revoked task whose message a worker held (a near ETA/countdown, a prefetched message) runs
-- after that worker restarts. The broker records every revoke broadcast here
-- (sql/functions/revokes.sql); workers load the ids when they start consuming and check
-- redelivered messages against them.

CREATE TABLE IF NOT EXISTS swf.revoked_tasks (
    task_id    text PRIMARY KEY,
    revoked_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS revoked_tasks_revoked_at ON swf.revoked_tasks (revoked_at);
