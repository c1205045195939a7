-- The console's view of the broker's queues (swf:// transport, sql/functions/queues.sql).
-- Every kombu queue is a row of swf.queues; its storage (swf.queues.storage) says where its
-- messages are: 'pgmq', its own table pgmq.q_<pgmq_name>; 'transient' (x-expires /
-- auto_delete: Celery's pidbox, reply and event queues), rows of swf.transient_messages keyed
-- by the kombu name. Dead letters of both are rows of swf.dead_letters. {queue} is an
-- identifier built by queues.py from a pgmq name read from swf.queues and checked against
-- transport.names.PGMQ_NAME; values are parameters.

-- name: queue_names
SELECT name, pgmq_name, storage FROM swf.queues ORDER BY name;

-- name: queue_stats
-- One SELECT per durable queue, joined with UNION ALL by queues.py; {index} numbers the
-- queue. waiting = what swf.queue_size counts (visible or delayed, not held by a consumer).
SELECT {index}::integer,
       count(*) FILTER (WHERE vt <= clock_timestamp()),
       count(*) FILTER (WHERE read_ct = 0 AND vt > clock_timestamp()),
       count(*) FILTER (WHERE read_ct > 0 AND vt > clock_timestamp()),
       extract(epoch FROM clock_timestamp()
               - min(enqueued_at) FILTER (WHERE vt <= clock_timestamp()))::float8
  FROM {queue}

-- name: transient_stats
SELECT q.name,
       count(m.msg_id) FILTER (WHERE m.vt <= clock_timestamp()),
       count(m.msg_id) FILTER (WHERE m.read_ct = 0 AND m.vt > clock_timestamp()),
       count(m.msg_id) FILTER (WHERE m.read_ct > 0 AND m.vt > clock_timestamp()),
       extract(epoch FROM clock_timestamp()
               - min(m.enqueued_at) FILTER (WHERE m.vt <= clock_timestamp()))::float8
  FROM swf.queues q LEFT JOIN swf.transient_messages m ON m.queue = q.name
 WHERE q.name = ANY (%(names)s)
 GROUP BY q.name;

-- name: dead_letter_counts
SELECT queue, count(*) FROM swf.dead_letters WHERE queue = ANY (%(names)s) GROUP BY queue;

-- name: dead_letters
-- The task name is the Celery message's (a workflow step's shows the user's task: shadow).
SELECT msg_id, read_ct, dead_at, reason,
       coalesce(message->'headers'->>'shadow', message->'headers'->>'task'),
       message->'headers'->>'id', left(message::text, %(cap)s), length(message::text)
  FROM swf.dead_letters
 WHERE queue = %(queue)s
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: requeue_dead_letters
-- Back into the queue as new messages, visible now, delivery count reset; the insert fires
-- the queue's wake-up trigger like any publish. %(ids)s NULL: all of them.
SELECT swf.queue_requeue_dead_letters(%(queue)s, %(ids)s);

-- name: purge_dead_letters
SELECT swf.queue_purge_dead_letters(%(queue)s, %(ids)s);
