-- Stored flows (FlowBuilder): created and edited at run time, executed by name.

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
