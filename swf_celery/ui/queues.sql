-- The console's view of the broker's queues (swf:// transport, sql/0002_transport.sql):
-- every kombu queue is a row of swf.queues and a pgmq table pair, pgmq.q_<pgmq_name>
-- (messages) and pgmq.a_<pgmq_name> (archive; dead letters carry headers.dead_letter).
-- {queue} and {archive} are identifiers built by queues.py from a pgmq name read from
-- swf.queues and checked against transport.names.PGMQ_NAME; values are parameters.
-- All queue statements live here so that a change of the storage is one file to adapt.

-- name: queue_names
SELECT name, pgmq_name FROM swf.queues ORDER BY name;

-- name: queue_stats
-- One SELECT per queue, joined with UNION ALL by queues.py; {index} numbers the queue.
-- waiting = what swf.queue_size counts (visible or delayed, not held by a consumer).
SELECT {index}::integer,
       count(*) FILTER (WHERE vt <= clock_timestamp()),
       count(*) FILTER (WHERE read_ct = 0 AND vt > clock_timestamp()),
       count(*) FILTER (WHERE read_ct > 0 AND vt > clock_timestamp()),
       extract(epoch FROM clock_timestamp()
               - min(enqueued_at) FILTER (WHERE vt <= clock_timestamp()))::float8,
       (SELECT count(*) FROM {archive} WHERE headers ? 'dead_letter')
  FROM {queue}

-- name: dead_letters
-- The task name is the Celery message's (a workflow step's shows the user's task: shadow).
SELECT msg_id, read_ct, archived_at, headers->>'dead_letter',
       coalesce(message->'headers'->>'shadow', message->'headers'->>'task'),
       message->'headers'->>'id', left(message::text, %(cap)s), length(message::text)
  FROM {archive}
 WHERE headers ? 'dead_letter'
 ORDER BY msg_id DESC
 LIMIT %(limit)s;

-- name: requeue_dead_letters
-- Back into the queue, visible now, delivery count reset; the insert fires the queue's
-- wake-up trigger like any publish. %(ids)s NULL: all of them.
WITH gone AS (
    DELETE FROM {archive}
     WHERE headers ? 'dead_letter' AND (%(ids)s::bigint[] IS NULL OR msg_id = ANY (%(ids)s))
    RETURNING msg_id, message, headers)
INSERT INTO {queue} (vt, read_ct, message, headers)
SELECT clock_timestamp(), 0, message, headers - 'dead_letter' FROM gone ORDER BY msg_id
RETURNING msg_id;

-- name: purge_dead_letters
DELETE FROM {archive}
 WHERE headers ? 'dead_letter' AND (%(ids)s::bigint[] IS NULL OR msg_id = ANY (%(ids)s))
RETURNING msg_id;

-- Transient queues (x-expires / auto_delete: Celery's pidbox, reply and event queues,
-- sql/0012_bounded_storage.sql) have no tables of their own: their messages are rows of
-- swf.transient_messages and their dead letters rows of swf.transient_archive, keyed by
-- the kombu queue name.

-- name: transient_stats
SELECT q.name,
       count(m.msg_id) FILTER (WHERE m.vt <= clock_timestamp()),
       count(m.msg_id) FILTER (WHERE m.read_ct = 0 AND m.vt > clock_timestamp()),
       count(m.msg_id) FILTER (WHERE m.read_ct > 0 AND m.vt > clock_timestamp()),
       extract(epoch FROM clock_timestamp()
               - min(m.enqueued_at) FILTER (WHERE m.vt <= clock_timestamp()))::float8,
       (SELECT count(*) FROM swf.transient_archive a
         WHERE a.queue = q.name AND a.headers ? 'dead_letter')
  FROM swf.queues q LEFT JOIN swf.transient_messages m ON m.queue = q.name
 WHERE q.name = ANY (%(names)s)
 GROUP BY q.name;

-- name: transient_dead_letters
SELECT msg_id, read_ct, archived_at, headers->>'dead_letter',
       coalesce(message->'headers'->>'shadow', message->'headers'->>'task'),
       message->'headers'->>'id', left(message::text, %(cap)s), length(message::text)
  FROM swf.transient_archive
 WHERE queue = %(queue)s AND headers ? 'dead_letter'
 ORDER BY msg_id DESC
 LIMIT %(limit)s;

-- name: transient_requeue_dead_letters
WITH gone AS (
    DELETE FROM swf.transient_archive
     WHERE queue = %(queue)s AND headers ? 'dead_letter'
       AND (%(ids)s::bigint[] IS NULL OR msg_id = ANY (%(ids)s))
    RETURNING msg_id, message, headers)
INSERT INTO swf.transient_messages (queue, vt, read_ct, message, headers)
SELECT %(queue)s, clock_timestamp(), 0, message, headers - 'dead_letter' FROM gone
 ORDER BY msg_id
RETURNING msg_id;

-- name: transient_purge_dead_letters
DELETE FROM swf.transient_archive
 WHERE queue = %(queue)s AND headers ? 'dead_letter'
   AND (%(ids)s::bigint[] IS NULL OR msg_id = ANY (%(ids)s))
RETURNING msg_id;
