-- name: queue_send
SELECT swf.queue_send(%(queue)s, %(message)s::jsonb, 0);
