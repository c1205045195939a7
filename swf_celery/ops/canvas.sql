-- Queries of swf_celery/ops/canvas.py (swf.cancel_canvas: sql/functions/queues.sql).

-- name: cancel_canvas
SELECT removed, held FROM swf.cancel_canvas(%(root_id)s);

-- name: record_revokes
SELECT swf.task_revoke(%(task_ids)s);
