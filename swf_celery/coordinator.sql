-- Calls into the coordinator's stored functions (sql/0004_workflows.sql).

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

-- name: expire_tasks
SELECT swf.expire_tasks(%(run_id)s::uuid);

-- name: listen
LISTEN swf_workflow_events;
