-- Statements on one queue's pgmq table, prepared per connection by psycopg. {queue} is
-- replaced by a quoted identifier built from a pgmq name read from swf.queues and checked
-- against names.PGMQ_NAME; values are parameters. These are the broker's only reads: plain
-- statements that psycopg prepares once per connection (no PL/pgSQL re-planning on the hot
-- path); channel.py drops messages over max_deliveries after reading.

-- name: read
-- %(acks)s: ids of this queue's messages acked since its last read, deleted by the same
-- statement (one round trip for both). They are hidden by their visibility timeout, so the
-- read never picks them.
WITH acked AS (
    DELETE FROM {queue} WHERE msg_id = ANY (%(acks)s::bigint[])),
picked AS (
    SELECT msg_id FROM {queue}
     WHERE vt <= clock_timestamp()
     ORDER BY (coalesce((headers->>'priority')::integer, 0)), msg_id
     LIMIT %(qty)s
       FOR UPDATE SKIP LOCKED)
UPDATE {queue} m
   SET vt = clock_timestamp() + make_interval(secs => %(vt)s),
       read_ct = m.read_ct + 1,
       last_read_at = clock_timestamp()
  FROM picked
 WHERE m.msg_id = picked.msg_id
RETURNING m.msg_id, m.read_ct, m.message, coalesce((m.headers->>'priority')::integer, 0);

-- name: pop
WITH picked AS (
    SELECT msg_id FROM {queue}
     WHERE vt <= clock_timestamp()
     ORDER BY (coalesce((headers->>'priority')::integer, 0)), msg_id
     LIMIT %(qty)s
       FOR UPDATE SKIP LOCKED)
DELETE FROM {queue} m
 USING picked
 WHERE m.msg_id = picked.msg_id
RETURNING m.msg_id, m.read_ct + 1, m.message, coalesce((m.headers->>'priority')::integer, 0);

-- name: delete
DELETE FROM {queue} WHERE msg_id = ANY (%(ids)s);

-- name: send
WITH durability AS (SELECT set_config('synchronous_commit', %(commit)s, true)),
     msg AS (SELECT %(message)s::jsonb AS message)
INSERT INTO {queue} (vt, message, headers)
SELECT clock_timestamp() + make_interval(secs => %(delay)s), msg.message,
       swf.queue_headers(msg.message)
  FROM msg, durability;
