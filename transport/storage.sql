-- The broker's statements on a queue's messages, written once for both storages and
-- prepared per connection by psycopg (plain statements: no PL/pgSQL re-planning on the hot
-- path). storage.py fills in, from the queue's storage (swf.queues.storage, chosen once):
--   {table}       the message table: pgmq.q_<pgmq name> (a quoted identifier, the name read
--                 from swf.queues and checked against names.PGMQ_NAME), or
--                 swf.transient_messages;
--   {key}         the condition selecting the queue's rows (a fragment below);
--   {order}       the read order's priority, as each table's index has it;
--   {priority}    that priority as an integer, returned with each message;
--   {free}        the condition of messages without a flow key (a durable queue's keyed
--                 messages are delivered only by swf.queue_read_limited, never here);
--   {columns} {values}  the key columns a send fills in.
-- Values are parameters; channel.py drops messages over max_deliveries after reading.

-- name: read
-- %(acks)s, %(receipts)s: ids of this queue's messages acked since its last read and the
-- receipt (read_ct) of each delivery, deleted by the same statement (one round trip for
-- both) when the receipt still matches: a message delivered again meanwhile (its visibility
-- timeout lapsed) stays. Acked messages are hidden by their visibility timeout, so the read
-- never picks them. Rows: one per message read (msg_id, read_ct: the new delivery's receipt,
-- message, priority), one (msg_id, NULL, NULL, NULL) per ack done, and, when it delivers
-- nothing, one (NULL, NULL, due, NULL): seconds until the queue's next message is visible
-- (JSON number; NULL when none is queued), as swf.queue_sleep says it, so that a consumer
-- woken for a message another took (or a delayed one) stays asleep without another statement.
WITH acked AS (
    DELETE FROM {table} m
     USING unnest(%(acks)s::bigint[], %(receipts)s::integer[]) AS d(msg_id, receipt)
     WHERE {key} AND m.msg_id = d.msg_id AND m.read_ct = d.receipt
    RETURNING m.msg_id),
picked AS (
    SELECT m.msg_id FROM {table} m
     WHERE {key} AND m.vt <= clock_timestamp() AND {free}
     ORDER BY {order}, m.msg_id
     LIMIT %(qty)s
       FOR UPDATE SKIP LOCKED),
delivered AS (
    UPDATE {table} m
       SET vt = clock_timestamp() + make_interval(secs => %(vt)s),
           read_ct = m.read_ct + 1,
           last_read_at = clock_timestamp()
      FROM picked
     WHERE m.msg_id = picked.msg_id
    RETURNING m.msg_id, m.read_ct, m.message, {priority} AS priority)
SELECT msg_id, read_ct, message, priority FROM delivered
UNION ALL
SELECT msg_id, NULL, NULL, NULL FROM acked
UNION ALL
SELECT NULL, NULL, to_jsonb(extract(epoch FROM min(m.vt) - clock_timestamp())), NULL
  FROM {table} m
 WHERE {key} AND {free}
HAVING NOT EXISTS (SELECT FROM delivered);

-- name: pop
WITH picked AS (
    SELECT m.msg_id FROM {table} m
     WHERE {key} AND m.vt <= clock_timestamp() AND {free}
     ORDER BY {order}, m.msg_id
     LIMIT %(qty)s
       FOR UPDATE SKIP LOCKED)
DELETE FROM {table} m
 USING picked
 WHERE m.msg_id = picked.msg_id
RETURNING m.msg_id, m.read_ct + 1, m.message, {priority};

-- name: delete
-- Acks: the deliveries whose receipt (read_ct) still matches; returns the ids deleted.
DELETE FROM {table} m
 USING unnest(%(ids)s::bigint[], %(receipts)s::integer[]) AS d(msg_id, receipt)
 WHERE {key} AND m.msg_id = d.msg_id AND m.read_ct = d.receipt
RETURNING m.msg_id;

-- name: send
-- %(commit)s: the publish's synchronous_commit; NULL inside a caller's transaction (see
-- swf_celery.db.transaction), which keeps its own.
-- A transient queue that expired meanwhile has no swf.queues row: the foreign key refuses
-- the row and the transport drops the message (as Redis does for a fanout queue nobody
-- consumes). No RETURNING: a client may publish, not read back.
WITH durability AS (SELECT set_config('synchronous_commit',
                                      coalesce(%(commit)s, current_setting('synchronous_commit')),
                                      true)),
     msg AS (SELECT %(message)s::jsonb AS message),
     hdr AS (SELECT msg.message, swf.queue_headers(msg.message) AS headers FROM msg)
INSERT INTO {table} ({columns}vt, message, headers)
SELECT {values}clock_timestamp() + make_interval(secs => %(delay)s), hdr.message, hdr.headers
  FROM hdr, durability;

-- name: send_many
-- As send, for the messages of one batch (a Celery group or chord header,
-- swf_celery/group_publish.py) in one insert: %(messages)s, a JSON array of them, and
-- %(delays)s, in publish order.
WITH durability AS (SELECT set_config('synchronous_commit',
                                      coalesce(%(commit)s, current_setting('synchronous_commit')),
                                      true)),
     hdr AS (SELECT b.message, swf.queue_headers(b.message) AS headers,
                    (%(delays)s::integer[])[b.n] AS delay, b.n
               FROM jsonb_array_elements(%(messages)s::jsonb) WITH ORDINALITY AS b(message, n))
INSERT INTO {table} ({columns}vt, message, headers)
SELECT {values}clock_timestamp() + make_interval(secs => hdr.delay), hdr.message, hdr.headers
  FROM hdr, durability
 ORDER BY hdr.n;

-- name: send_once
-- As send, for a message with an idempotency key: the key is claimed for the message's task
-- id in the same statement, and the message is stored only when that id holds the key (the
-- first publish within the window, or a claim this transaction made already).
WITH durability AS (SELECT set_config('synchronous_commit',
                                      coalesce(%(commit)s, current_setting('synchronous_commit')),
                                      true)),
     msg AS (SELECT %(message)s::jsonb AS message),
     hdr AS (SELECT msg.message, swf.queue_headers(msg.message) AS headers FROM msg),
     claim AS (SELECT swf.idempotency_claim('task', %(idempotency_key)s, %(task_id)s,
                                            %(window)s) AS holder)
INSERT INTO {table} ({columns}vt, message, headers)
SELECT {values}clock_timestamp() + make_interval(secs => %(delay)s), hdr.message, hdr.headers
  FROM hdr, durability, claim
 WHERE claim.holder = %(task_id)s;

-- Fragments of each storage.

-- name: pgmq_key
TRUE

-- name: pgmq_order
(coalesce((m.headers ->> 'priority')::integer, 0))

-- name: pgmq_priority
coalesce((m.headers ->> 'priority')::integer, 0)

-- name: pgmq_free
(m.headers ? 'flow') IS NOT TRUE

-- name: pgmq_columns

-- name: pgmq_values

-- name: transient_key
m.queue = %(queue)s

-- name: transient_order
m.priority

-- name: transient_priority
m.priority::integer

-- name: transient_free
TRUE

-- name: transient_columns
queue, priority, 

-- name: transient_values
%(queue)s, (hdr.headers ->> 'priority')::smallint, 
