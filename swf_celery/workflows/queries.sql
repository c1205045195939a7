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
