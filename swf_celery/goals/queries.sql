-- name: insert_graph
INSERT INTO swf.task_graphs (goal, tasks, flat_tasks)
VALUES (%(goal)s, %(tasks)s::jsonb, %(flat)s::jsonb)
RETURNING id::text, decomposed_at;

-- name: get_graph
SELECT id::text, goal, tasks, flat_tasks, status, workflow_id, last_run_id::text,
       decomposed_at, approved_at
  FROM swf.task_graphs WHERE id = %(id)s::uuid;

-- name: list_graphs
SELECT id::text, goal, tasks, flat_tasks, status, workflow_id, last_run_id::text,
       decomposed_at, approved_at
  FROM swf.task_graphs ORDER BY decomposed_at DESC, id LIMIT %(limit)s OFFSET %(offset)s;

-- name: approve_graph
UPDATE swf.task_graphs
   SET status = CASE WHEN status = 'decomposed' THEN 'approved' ELSE status END,
       approved_at = coalesce(approved_at, now()), updated_at = now()
 WHERE id = %(id)s::uuid
RETURNING approved_at;

-- name: mark_running
UPDATE swf.task_graphs
   SET status = 'running', workflow_id = %(workflow_id)s, last_run_id = %(run_id)s::uuid,
       updated_at = now()
 WHERE id = %(id)s::uuid;

-- name: mark_finished
UPDATE swf.task_graphs
   SET status = %(status)s, updated_at = now()
 WHERE id = %(id)s::uuid AND last_run_id = %(run_id)s::uuid;
