-- Queries of swf_celery/ops/retention.py (functions: sql/functions/retention.sql). Each
-- deletes at most %(batch)s rows in its own short transaction and returns how many, or -1
-- when another session holds the cleanup lock; with %(dry)s it only counts.

-- name: runs
SELECT swf.retention_runs(%(before)s, %(batch)s, %(dry)s);

-- name: task_graphs
SELECT swf.retention_task_graphs(%(before)s, %(batch)s, %(dry)s);

-- name: flows
SELECT swf.retention_flows(%(before)s, %(batch)s, %(dry)s);

-- name: archives
SELECT swf.retention_archives(%(kind)s, %(before)s, %(batch)s, %(dry)s);

-- name: results
SELECT swf.retention_results(%(before)s, %(batch)s, %(dry)s);

-- name: queues
SELECT swf.retention_queues(%(before)s, %(batch)s, %(dry)s);

-- name: session_role
SELECT session_user::text;

-- name: caller_part
-- The part of the role this connection logs in as (NULL: none granted).
SELECT swf.caller_part();
