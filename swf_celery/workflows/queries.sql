-- Queries of the workflow engine (swf_celery/workflows/). Sections: coordinator, flows,
-- lifecycle. Named blocks are loaded by swf_celery.db.load_queries.

-- == The coordinator: calls into the state machine's stored functions (sql/functions/workflows.sql).
-- name: start_run
SELECT swf.start_run(%(slug)s, %(steps)s::jsonb, %(input)s::jsonb, %(dynamic)s, %(hash)s,
                     %(retry_of)s)::text;

-- name: start_task
SELECT swf.start_task(%(task_id)s::uuid);

-- name: complete_task
SELECT swf.complete_task(%(task_id)s::uuid, %(output)s::jsonb);

-- name: fail_task
SELECT swf.fail_task(%(task_id)s::uuid, %(error)s);

-- name: claim_local_tasks
SELECT task_id::text, task FROM swf.claim_local_tasks(%(run_id)s::uuid, %(limit)s);

-- name: run_tick
SELECT swf.run_tick(%(run_id)s::uuid);

-- name: drive_run
SELECT swf.drive_run(%(run_id)s::uuid, %(owner)s, %(lease_ms)s, %(take)s);

-- name: run_functions
-- The recorded import references of a run's local steps, and its input (goal tasks'
-- descriptions).
SELECT r.input, (SELECT jsonb_object_agg(s.step_name, s.function_ref ORDER BY s.step_index)
                   FROM swf.step_states s WHERE s.run_id = r.id AND s.execution = 'local')
  FROM swf.runs r WHERE r.id = %(run_id)s::uuid;

-- name: expire_tasks
SELECT swf.expire_tasks(%(run_id)s::uuid);

-- name: sweep_timeouts
SELECT swf.sweep_timeouts();

-- name: running_tasks
SELECT swf.running_tasks(%(run_id)s::uuid);

-- name: skip_task
SELECT swf.skip_task(%(task_id)s::uuid, %(reason)s);

-- name: signal_run
SELECT swf.signal_run(%(run_id)s::uuid, %(name)s, %(payload)s::jsonb);

-- name: abandon_task
SELECT swf.abandon_task(%(task_id)s::uuid, %(reason)s);



-- == Stored flows (FlowBuilder): created and edited at run time, executed by name.
-- name: create_flow
INSERT INTO swf.flows (slug, dynamic) VALUES (%(slug)s, true)
    ON CONFLICT (slug) DO NOTHING
RETURNING slug;

-- name: lock_flow
SELECT id, dynamic FROM swf.flows WHERE slug = %(slug)s FOR UPDATE;

-- name: flow_steps
SELECT step_name, depends_on, options FROM swf.flow_steps
 WHERE flow_id = %(flow_id)s ORDER BY step_index;

-- name: add_step
INSERT INTO swf.flow_steps (flow_id, step_name, step_index, depends_on, options)
VALUES (%(flow_id)s, %(step)s,
        (SELECT count(*) FROM swf.flow_steps WHERE flow_id = %(flow_id)s),
        %(depends_on)s, %(options)s::jsonb);

-- name: list_flows
SELECT f.slug, f.dynamic, f.created_at,
       (SELECT count(*) FROM swf.flow_steps s WHERE s.flow_id = f.id) AS step_count
  FROM swf.flows f
 ORDER BY f.created_at, f.slug;

-- name: get_flow
SELECT id, slug, dynamic, created_at FROM swf.flows WHERE slug = %(slug)s;

-- name: active_runs
SELECT count(*) FROM swf.runs
 WHERE flow_id = %(flow_id)s AND status IN ('in_progress', 'paused');

-- name: delete_flow
DELETE FROM swf.flows WHERE id = %(flow_id)s;


-- == Run lifecycle: status, listing, pause, resume, cancel, retry (sql/functions/lifecycle.sql).
-- name: run_status
SELECT swf.run_status(%(run_id)s::uuid);

-- name: pause_run
SELECT swf.pause_run(%(run_id)s::uuid);

-- name: resume_run
SELECT swf.resume_run(%(run_id)s::uuid);

-- name: cancel_run
SELECT swf.cancel_run(%(run_id)s::uuid, %(reason)s, %(force)s);

-- name: retry_run
SELECT swf.retry_run(%(run_id)s::uuid, %(reuse)s);

-- name: replay_run
SELECT swf.replay_run(%(run_id)s::uuid, %(step)s, %(input)s::jsonb, %(new_input)s);

-- name: run_local_steps
SELECT flow_slug, coalesce(array_agg(s.step_name ORDER BY s.step_index)
                           FILTER (WHERE s.execution = 'local'), '{}')
  FROM swf.runs r JOIN swf.step_states s ON s.run_id = r.id
 WHERE r.id = %(run_id)s::uuid
 GROUP BY flow_slug;

-- name: list_runs
-- {order} and {direction} come from allow-lists in lifecycle.py, never from the caller.
SELECT id::text, flow_slug, status, total_steps, total_steps - remaining_steps,
       error, failed_step, retry_of::text, inserted_at, updated_at, finished_at
  FROM swf.runs
 WHERE (%(statuses)s::text[] IS NULL OR status = ANY (%(statuses)s::text[]))
   AND (%(slug)s::text IS NULL OR flow_slug = %(slug)s::text)
 ORDER BY {order} {direction}, id
 LIMIT %(limit)s OFFSET %(offset)s;


-- == Execution statistics (swf_celery/workflows/statistics.py): runs started since the
-- window's start, of one flow or all. Durations in ms. Bounded by retention, which deletes
-- finished runs; the window uses runs_slug_inserted / runs_status_inserted.
-- name: flow_stats
SELECT r.flow_slug,
       count(*) AS runs,
       count(*) FILTER (WHERE r.status = 'completed') AS completed,
       count(*) FILTER (WHERE r.status = 'failed') AS failed,
       count(*) FILTER (WHERE r.status = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE r.status IN ('in_progress', 'paused')) AS active,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.finished_at - r.inserted_at))
           FILTER (WHERE r.status = 'completed') * 1000 AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM r.finished_at - r.inserted_at))
           FILTER (WHERE r.status = 'completed') * 1000 AS p95_ms,
       max(extract(epoch FROM r.finished_at - r.inserted_at))
           FILTER (WHERE r.status = 'completed') * 1000 AS max_ms
  FROM swf.runs r
 WHERE r.inserted_at >= %(since)s
   AND (%(slug)s::text IS NULL OR r.flow_slug = %(slug)s::text)
 GROUP BY r.flow_slug
 ORDER BY r.flow_slug;

-- name: step_stats
-- Per step: its states in those runs; attempts are the step's tasks' attempts; queue wait
-- is from when an attempt was due to when it started.
WITH steps AS (
    SELECT r.flow_slug, s.run_id, s.step_name, s.step_index, s.status,
           extract(epoch FROM s.completed_at - s.started_at) * 1000 AS duration_ms
      FROM swf.runs r JOIN swf.step_states s ON s.run_id = r.id
     WHERE r.inserted_at >= %(since)s
       AND (%(slug)s::text IS NULL OR r.flow_slug = %(slug)s::text)),
tasks AS (
    SELECT st.flow_slug, st.step_name, sum(t.attempt) AS attempts,
           percentile_cont(0.5) WITHIN GROUP (
               ORDER BY extract(epoch FROM t.started_at - t.available_at)) * 1000 AS wait_p50,
           percentile_cont(0.95) WITHIN GROUP (
               ORDER BY extract(epoch FROM t.started_at - t.available_at)) * 1000 AS wait_p95
      FROM steps st JOIN swf.step_tasks t
        ON t.run_id = st.run_id AND t.step_name = st.step_name
     GROUP BY st.flow_slug, st.step_name)
SELECT st.flow_slug, st.step_name, count(*) AS runs,
       count(*) FILTER (WHERE st.status = 'completed') AS completed,
       count(*) FILTER (WHERE st.status = 'failed') AS failed,
       count(*) FILTER (WHERE st.status = 'skipped') AS skipped,
       min(tk.attempts) AS attempts,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY st.duration_ms)
           FILTER (WHERE st.status = 'completed') AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY st.duration_ms)
           FILTER (WHERE st.status = 'completed') AS p95_ms,
       max(st.duration_ms) FILTER (WHERE st.status = 'completed') AS max_ms,
       min(tk.wait_p50) AS wait_p50_ms, min(tk.wait_p95) AS wait_p95_ms
  FROM steps st LEFT JOIN tasks tk
    ON tk.flow_slug = st.flow_slug AND tk.step_name = st.step_name
 GROUP BY st.flow_slug, st.step_name
 ORDER BY st.flow_slug, min(st.step_index), st.step_name;
