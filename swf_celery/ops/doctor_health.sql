-- Queries of swf_celery/ops/doctor_health.py: PostgreSQL's health for this workload.

-- name: horizon_sessions
-- Sessions of this database whose snapshot or transaction is older than %(after)s seconds:
-- VACUUM keeps every row version they might still see (PostgreSQL's xmin horizon), so dead
-- queue and state rows pile up behind them. Oldest first.
SELECT pid, usename, application_name, host(client_addr), state,
       extract(epoch FROM now() - xact_start)::float8,
       age(coalesce(backend_xmin, backend_xid))::bigint,
       left(query, 200)
  FROM pg_stat_activity
 WHERE datname = current_database()
   AND pid <> pg_backend_pid()
   AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)
   AND xact_start < now() - make_interval(secs => %(after)s)
 ORDER BY xact_start;

-- name: prepared_xacts
-- Prepared (two-phase) transactions left behind hold the horizon as well.
SELECT gid, owner, extract(epoch FROM now() - prepared)::float8, age(transaction)::bigint
  FROM pg_prepared_xacts
 WHERE database = current_database()
   AND prepared < now() - make_interval(secs => %(after)s)
 ORDER BY prepared;

-- name: replication_slots
-- Slots that hold back vacuum (xmin, catalog_xmin) or keep WAL on disk; the WAL kept is
-- NULL on a standby (no current WAL position to count from).
SELECT slot_name, slot_type, active, xmin IS NOT NULL OR catalog_xmin IS NOT NULL,
       age(coalesce(xmin, catalog_xmin))::bigint,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END
  FROM pg_replication_slots
 WHERE database IS NULL OR database = current_database()
 ORDER BY active, slot_name;

-- name: tables
-- The queue and state tables (schemas swf and pgmq): size, live and dead row versions, the
-- last vacuum.
SELECT n.nspname || '.' || c.relname, pg_total_relation_size(c.oid),
       s.n_live_tup, s.n_dead_tup,
       extract(epoch FROM now() - greatest(s.last_vacuum, s.last_autovacuum))::float8
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_stat_all_tables s ON s.relid = c.oid
 WHERE n.nspname IN ('swf', 'pgmq') AND c.relkind = 'r'
 ORDER BY s.n_dead_tup DESC, pg_total_relation_size(c.oid) DESC;

-- name: connections
-- Client sessions of the whole server by application and role, and the server's limit
-- (max_connections less the slots reserved for superusers).
SELECT coalesce(nullif(application_name, ''), '(none)'), coalesce(usename, '?'),
       coalesce(datname, '?'), count(*)::integer
  FROM pg_stat_activity
 WHERE backend_type = 'client backend'
 GROUP BY 1, 2, 3
 ORDER BY 4 DESC, 1, 2;

-- name: connection_limit
SELECT current_setting('max_connections')::integer
       - current_setting('superuser_reserved_connections')::integer;

-- name: sessions_since
-- When the oldest other session of this database connected, and when the server started:
-- a message delivered before both has no reader left (see doctor_runs.py).
SELECT (SELECT min(backend_start) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND backend_type = 'client backend'),
       pg_postmaster_start_time();

-- name: retention_overdue
-- What retention should have removed a day ago or more (the default ages of
-- swf_celery/ops/retention.py's RetentionPolicy): finished runs, dead letters, expired
-- results.
SELECT (SELECT count(*) FROM swf.runs
         WHERE status IN ('completed', 'failed', 'cancelled')
           AND coalesce(finished_at, updated_at) < now() - %(runs)s::interval),
       (SELECT count(*) FROM swf.dead_letters WHERE dead_at < now() - %(dead_letters)s::interval),
       (SELECT count(*) FROM swf.task_results WHERE expires_at < now() - interval '1 day');

-- name: dead_letters
-- Dead letters by queue: how many, the newest, and the most common reason.
SELECT queue, count(*)::integer, max(dead_at),
       mode() WITHIN GROUP (ORDER BY reason)
  FROM swf.dead_letters
 GROUP BY queue
 ORDER BY 2 DESC, 1;

-- name: queues
SELECT queue, visible, extract(epoch FROM now() - oldest_visible)::float8, delayed, held,
       extract(epoch FROM now() - last_active)::float8
  FROM swf.doctor_queues();

-- name: held_messages
SELECT queue, msg_id, read_ct, vt, last_read_at, task_id, task_name,
       extract(epoch FROM vt - clock_timestamp())::float8
  FROM swf.doctor_held_messages(%(limit)s);
