-- Revokes that hold (sql/functions/revokes.sql): read by a consuming worker.

-- name: load
SELECT task_id, age_s FROM swf.task_revokes(%(expires)s, %(max_n)s);

-- name: check
SELECT task_id, extract(epoch FROM clock_timestamp() - revoked_at)::double precision
  FROM swf.revoked_tasks
 WHERE task_id = ANY (%(ids)s)
   AND revoked_at >= clock_timestamp() - make_interval(secs => %(expires)s);

-- name: stamps
SELECT id, headers, age_s FROM swf.task_stamp_revokes(%(after)s, %(expires)s, %(max_n)s);
