-- Queries of swf_celery/messaging/send.py. {queue_table} and {archive_table} are pgmq's
-- tables of a validated channel, filled in with psycopg.sql.Identifier.

-- name: ensure_channel
SELECT swf.ensure_channel(%(channel)s, %(queue)s);

-- name: channel_queue
SELECT queue_name FROM swf.channels WHERE channel = %(channel)s;

-- name: send
-- The NOTIFY is queued in the same transaction as the row: listeners hear of the
-- message exactly when it becomes visible, and never of a rolled-back one. It is a hint
-- (swf.notify_hint): skipped, never failing the send, while PostgreSQL's notification
-- queue is too full; listeners then report a gap and readers re-read the queue.
-- pgmq.send(queue, message) is this INSERT run as dynamic SQL, planned anew on every
-- call; inserting into the queue table directly lets the statement be prepared once.
WITH sent AS (
    INSERT INTO pgmq.{queue_table} (vt, message)
    VALUES (clock_timestamp(), %(message)s::jsonb)
    RETURNING msg_id
)
SELECT msg_id, swf.notify_hint(%(notify_channel)s, '{{"swf_message_id":' || msg_id || '}}')
FROM sent;

-- name: notify
-- The caller asked for exactly this NOTIFY: refused (54000), not skipped, while the
-- notification queue is too full.
SELECT swf.notify_required(%(notify_channel)s, %(payload)s);

-- name: get_message
(SELECT msg_id, message, enqueued_at, read_ct, false AS archived
   FROM pgmq.{queue_table} WHERE msg_id = %(id)s)
UNION ALL
(SELECT msg_id, message, enqueued_at, read_ct, true
   FROM pgmq.{archive_table} WHERE msg_id = %(id)s)
LIMIT 1;

-- name: read_pending
SELECT msg_id, message, enqueued_at, read_ct, false AS archived
FROM pgmq.{queue_table}
WHERE msg_id > %(after_id)s
ORDER BY msg_id
LIMIT %(limit)s;

-- name: archive
SELECT pgmq.archive(%(queue)s, %(ids)s::bigint[]);

-- name: delete
SELECT pgmq.delete(%(queue)s, %(ids)s::bigint[]);
