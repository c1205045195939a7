-- Queries of benchmarks/bench_storage.py. {table} is a queue's pgmq table (an identifier
-- built from swf.queues); values are parameters.

-- name: fill
-- One statement per queue: n queued messages, task ids '<prefix><g>', root ids spread so
-- that each root has a few messages in every queue (a canvas spanning all queues).
INSERT INTO {table} (vt, message, headers)
SELECT clock_timestamp(),
       jsonb_build_object('body', '', 'content-type', 'application/json',
                          'headers', jsonb_build_object('id', s.task_id, 'root_id', s.root_id),
                          'properties', '{{}}'::jsonb),
       jsonb_build_object('priority', 0, 'task_id', s.task_id, 'root_id', s.root_id)
  FROM (SELECT %(prefix)s || g AS task_id, 'root-' || (g %% %(roots)s) AS root_id
          FROM generate_series(1, %(n)s) g) s;

-- name: count
SELECT count(*) FROM {table};

-- name: catalog_top
SELECT max(oid::bigint), count(*) FROM pg_class;

-- name: full_scan
-- The cancel as it was before the task/root id indexes: every queue table read in full.
SELECT set_config('enable_indexscan', 'off', true), set_config('enable_bitmapscan', 'off', true),
       swf.queue_remove_tasks(%(task_ids)s);
