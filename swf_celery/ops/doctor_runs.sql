-- Queries of swf_celery/ops/doctor_runs.py: why a run is not moving.

-- name: stalled_runs
-- Active runs (in progress or paused) where nothing happened for %(after)s seconds: no
-- step task queued, started or finished, no retry became due, the run row untouched (a retry
-- due later is not movement: the run waits for it). Longest still first.
SELECT r.id::text
  FROM swf.runs r
  LEFT JOIN LATERAL (
        SELECT max(greatest(t.queued_at, t.started_at, t.completed_at,
                            CASE WHEN t.available_at <= now() THEN t.available_at END)) AS moved
          FROM swf.step_tasks t WHERE t.run_id = r.id) m ON true
 WHERE r.status IN ('in_progress', 'paused')
   AND greatest(r.updated_at, m.moved) < now() - make_interval(secs => %(after)s)
 ORDER BY greatest(r.updated_at, m.moved)
 LIMIT %(limit)s;

-- name: run
SELECT id::text, flow_slug, status, extract(epoch FROM now() - updated_at)::float8,
       remaining_steps, total_steps
  FROM swf.runs WHERE id = %(run_id)s::uuid;

-- name: open_tasks
-- The run's attempts that are not finished, with their step and (swf:// result backend
-- with task_track_started) the worker that started them.
SELECT t.step_name, t.task_index, t.task_id::text, t.attempt, t.status, t.execution,
       t.message_id, s.queue, s.task_name, t.error,
       extract(epoch FROM t.available_at - now())::float8,
       extract(epoch FROM now() - t.started_at)::float8,
       extract(epoch FROM now() - t.deadline)::float8,
       r.worker
  FROM swf.step_tasks t
  JOIN swf.step_states s USING (run_id, step_name)
  LEFT JOIN swf.task_results r ON r.task_id = t.task_id::text
 WHERE t.run_id = %(run_id)s::uuid AND t.status IN ('queued', 'paused', 'started')
 ORDER BY s.step_index, t.task_index
 LIMIT %(limit)s;

-- name: waiting_steps
-- Steps not started: waiting for dependencies (created) or for the run's resume (ready).
SELECT step_name, status, remaining_deps, depends_on
  FROM swf.step_states
 WHERE run_id = %(run_id)s::uuid AND status IN ('created', 'ready')
 ORDER BY step_index;

-- name: message
SELECT read_ct, vt, extract(epoch FROM vt - clock_timestamp())::float8, last_read_at
  FROM swf.doctor_messages(%(queue)s, ARRAY[%(msg_id)s::bigint]);

-- name: dead_letter
-- The dead letter of a step task's message, if the broker buried it.
SELECT reason, dead_at, read_ct
  FROM swf.dead_letters
 WHERE queue = %(queue)s AND message #>> '{headers,id}' = %(task_id)s
 ORDER BY id DESC LIMIT 1;

-- name: queue_idle
-- Seconds since a consumer last marked the queue (NULL: no such queue).
SELECT extract(epoch FROM now() - last_active)::float8 FROM swf.queues WHERE name = %(queue)s;
