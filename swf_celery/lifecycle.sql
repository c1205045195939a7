-- Run lifecycle queries (stored functions in sql/0006_lifecycle.sql).

-- name: run_status
SELECT swf.run_status(%(run_id)s::uuid);

-- name: pause_run
SELECT swf.pause_run(%(run_id)s::uuid);

-- name: resume_run
SELECT swf.resume_run(%(run_id)s::uuid);

-- name: cancel_run
SELECT swf.cancel_run(%(run_id)s::uuid, %(reason)s, %(force)s);

-- name: retry_run
SELECT swf.retry_run(%(run_id)s::uuid, %(reuse)s)::text;

-- name: run_task_names
SELECT step_name, execution FROM swf.step_states WHERE run_id = %(run_id)s::uuid;

-- name: list_runs
-- {order} and {direction} come from allow-lists in lifecycle.py, never from the caller.
SELECT id::text, flow_slug, status, total_steps, total_steps - remaining_steps,
       error, failed_step, retry_of::text, inserted_at, updated_at, finished_at
  FROM swf.runs
 WHERE (%(statuses)s::text[] IS NULL OR status = ANY (%(statuses)s::text[]))
   AND (%(slug)s::text IS NULL OR flow_slug = %(slug)s::text)
 ORDER BY {order} {direction}, id
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: cancel_canvas
SELECT removed, held FROM swf.cancel_canvas(%(root_id)s);
