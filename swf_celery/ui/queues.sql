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
-- queue. Each reads at most %(limit)s ready and %(limit)s not-ready rows, in the order of
-- the queue's vt index (pgmq's q_<name>_vt_idx), never the whole table: a count equal to
-- %(limit)s means "at least". The oldest ready message is the oldest of those read. The
-- moment is the statement's start (stable, so the index can use it).
SELECT {index}::integer, r.n, f.delayed, f.held,
       extract(epoch FROM statement_timestamp() - r.oldest)::float8, f.n
  FROM (SELECT count(*) AS n, min(enqueued_at) AS oldest
          FROM (SELECT enqueued_at FROM {queue} WHERE vt <= statement_timestamp()
                 ORDER BY vt LIMIT %(limit)s) ready) r,
       (SELECT count(*) FILTER (WHERE read_ct = 0) AS delayed,
               count(*) FILTER (WHERE read_ct > 0) AS held, count(*) AS n
          FROM (SELECT read_ct FROM {queue} WHERE vt > statement_timestamp()
                 ORDER BY vt LIMIT %(limit)s) later) f

-- name: table_estimates
-- PostgreSQL's own count of the live rows of each durable queue's table (%(tables)s: pgmq
-- table names): the statistics' live-tuple count, kept current by every insert and delete,
-- else the planner's estimate (reltuples per page times the pages the table has now). No
-- row is read.
SELECT c.relname,
       coalesce(nullif(s.n_live_tup, 0),
                CASE WHEN c.reltuples > 0 AND c.relpages > 0
                     THEN c.reltuples / c.relpages
                          * (pg_relation_size(c.oid) / current_setting('block_size')::float8)
                END, 0)::bigint
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'pgmq'
  LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
 WHERE c.relname = ANY (%(tables)s);

-- name: transient_stats
-- Transient queues share one table: each queue reads at most %(limit)s of its rows through
-- the index on (queue, priority, msg_id); a queue with %(limit)s rows has at least that.
SELECT q.name, t.ready, t.delayed, t.held,
       extract(epoch FROM statement_timestamp() - t.oldest)::float8, t.n
  FROM unnest(%(names)s::text[]) AS q(name)
 CROSS JOIN LATERAL (
       SELECT count(*) FILTER (WHERE m.vt <= statement_timestamp()) AS ready,
              count(*) FILTER (WHERE m.read_ct = 0 AND m.vt > statement_timestamp()) AS delayed,
              count(*) FILTER (WHERE m.read_ct > 0 AND m.vt > statement_timestamp()) AS held,
              min(m.enqueued_at) FILTER (WHERE m.vt <= statement_timestamp()) AS oldest,
              count(*) AS n
         FROM (SELECT vt, read_ct, enqueued_at FROM swf.transient_messages
                WHERE queue = q.name LIMIT %(limit)s) m) t;

-- name: dead_letter_counts
-- At most %(limit)s index entries (dead_letters_queue) read per queue.
SELECT q.name, (SELECT count(*) FROM (SELECT 1 FROM swf.dead_letters d
                                       WHERE d.queue = q.name LIMIT %(limit)s) x)
  FROM unnest(%(names)s::text[]) AS q(name);

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
