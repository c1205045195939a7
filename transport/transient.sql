-- Statements on the shared table of transient queues (sql/migrations/0012_bounded_storage.sql): the
-- same reads, pops, deletes and sends as tables.sql, with the queue name as a parameter
-- instead of a table. channel.py runs these for queues whose pgmq name starts with 't_'.

-- name: read
WITH picked AS (
    SELECT msg_id FROM swf.transient_messages
     WHERE queue = %(queue)s AND vt <= clock_timestamp()
     ORDER BY priority, msg_id
     LIMIT %(qty)s
       FOR UPDATE SKIP LOCKED)
UPDATE swf.transient_messages m
   SET vt = clock_timestamp() + make_interval(secs => %(vt)s),
       read_ct = m.read_ct + 1,
       last_read_at = clock_timestamp()
  FROM picked
 WHERE m.msg_id = picked.msg_id
RETURNING m.msg_id, m.read_ct, m.message, m.priority::integer;

-- name: pop
WITH picked AS (
    SELECT msg_id FROM swf.transient_messages
     WHERE queue = %(queue)s AND vt <= clock_timestamp()
     ORDER BY priority, msg_id
     LIMIT %(qty)s
       FOR UPDATE SKIP LOCKED)
DELETE FROM swf.transient_messages m
 USING picked
 WHERE m.msg_id = picked.msg_id
RETURNING m.msg_id, m.read_ct + 1, m.message, m.priority::integer;

-- name: delete
DELETE FROM swf.transient_messages WHERE queue = %(queue)s AND msg_id = ANY (%(ids)s);

-- name: send
-- A queue that expired meanwhile has no swf.queues row: the foreign key refuses the row and
-- the transport drops the message (as Redis does for a fanout queue nobody consumes).
WITH durability AS (SELECT set_config('synchronous_commit', %(commit)s, true)),
     msg AS (SELECT %(message)s::jsonb AS message),
     hdr AS (SELECT msg.message, swf.queue_headers(msg.message) AS headers FROM msg)
INSERT INTO swf.transient_messages (queue, priority, vt, message, headers)
SELECT %(queue)s, (hdr.headers ->> 'priority')::smallint,
       clock_timestamp() + make_interval(secs => %(delay)s), hdr.message, hdr.headers
  FROM hdr, durability;
