-- Read-only views of runs and steps for the web console (swf_celery/ui/). Controls go
-- through the public lifecycle API, never through these statements.

-- name: list_runs
-- Runs filtered by status, workflow and time (all optional), newest first.
SELECT id::text, flow_slug, status, total_steps, total_steps - remaining_steps,
       error, failed_step, retry_of::text, inserted_at, updated_at, finished_at
  FROM swf.runs
 WHERE (%(statuses)s::text[] IS NULL OR status = ANY (%(statuses)s::text[]))
   AND (%(slug)s::text IS NULL OR flow_slug = %(slug)s::text)
   AND (%(since)s::timestamptz IS NULL OR inserted_at >= %(since)s::timestamptz)
   AND (%(until)s::timestamptz IS NULL OR inserted_at < %(until)s::timestamptz)
 ORDER BY inserted_at DESC, id
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_runs
-- Runs by status under the same workflow and time filters (status filter not applied).
SELECT status, count(*)
  FROM swf.runs
 WHERE (%(slug)s::text IS NULL OR flow_slug = %(slug)s::text)
   AND (%(since)s::timestamptz IS NULL OR inserted_at >= %(since)s::timestamptz)
   AND (%(until)s::timestamptz IS NULL OR inserted_at < %(until)s::timestamptz)
 GROUP BY status;

-- name: workflow_slugs
SELECT DISTINCT flow_slug FROM swf.runs ORDER BY flow_slug LIMIT 500;

-- name: run_attempts
-- One row per step task (the latest attempt of each task), with the worker that ran it
-- when the app stores results with the swf:// result backend.
SELECT t.step_name, t.task_index, t.task_id::text, t.attempt, t.status, t.execution,
       s.queue, t.queued_at, t.started_at, t.completed_at,
       extract(epoch FROM t.completed_at - t.started_at), r.worker, t.error
  FROM swf.step_tasks t
  JOIN swf.step_states s USING (run_id, step_name)
  LEFT JOIN swf.task_results r ON r.task_id = t.task_id::text
 WHERE t.run_id = %(run_id)s::uuid
 ORDER BY coalesce(t.started_at, t.queued_at), s.step_index, t.task_index;

-- name: step_detail
-- What a step received and produced, each as JSON text cut to %(cap)s characters; the
-- full length is returned so the page can say what was cut.
SELECT s.step_name, s.status, s.error,
       left(s.output::text, %(cap)s), length(s.output::text),
       left(r.input::text, %(cap)s), length(r.input::text),
       s.depends_on
  FROM swf.step_states s
  JOIN swf.runs r ON r.id = s.run_id
 WHERE s.run_id = %(run_id)s::uuid AND s.step_name = %(step)s;

-- name: dependency_outputs
-- The outputs a step's dependencies gave it (its input beside the run input), cut.
SELECT step_name, left(output::text, %(cap)s), length(output::text)
  FROM swf.step_states
 WHERE run_id = %(run_id)s::uuid AND step_name = ANY (%(names)s::text[])
 ORDER BY step_index;

-- == Metrics (/metrics): aggregates only, one statement each.
-- name: metric_runs_by_status
SELECT flow_slug, status, count(*) FROM swf.runs GROUP BY flow_slug, status;

-- name: metric_step_durations
-- Histogram of finished attempts' durations by step and queue, over all stored attempts:
-- one row per (step, queue, upper bound in %(bounds)s) with the attempts at or under the
-- bound, the attempts in all and the sum of their seconds.
WITH d AS (
    SELECT t.step_name, coalesce(s.queue, 'local') AS queue,
           extract(epoch FROM t.completed_at - t.started_at)::float8 AS secs
      FROM swf.step_tasks t
      JOIN swf.step_states s USING (run_id, step_name)
     WHERE t.started_at IS NOT NULL AND t.completed_at IS NOT NULL)
SELECT d.step_name, d.queue, b.bound, count(*) FILTER (WHERE d.secs <= b.bound),
       count(*), coalesce(sum(d.secs), 0)
  FROM d CROSS JOIN unnest(%(bounds)s::float8[]) AS b(bound)
 GROUP BY d.step_name, d.queue, b.bound
 ORDER BY d.step_name, d.queue, b.bound;

-- name: metric_step_failures
-- Attempts that failed (retried or final) by step and queue: the engine's error count.
SELECT t.step_name, coalesce(s.queue, 'local'),
       sum(t.attempt - 1 + CASE WHEN t.status = 'failed' THEN 1 ELSE 0 END)
  FROM swf.step_tasks t
  JOIN swf.step_states s USING (run_id, step_name)
 WHERE t.attempt > 1 OR t.status = 'failed'
 GROUP BY 1, 2;
