-- Queries of swf_celery/db/notifications.py: PostgreSQL's notification queue and who holds it.

-- name: usage
SELECT pg_notification_queue_usage(), swf.notify_queue_limit(), swf.notify_skipped();

-- name: skipped
SELECT swf.notify_skipped();

-- name: suspects
-- Sessions that can hold the queue: PostgreSQL delivers NOTIFYs to a session only between
-- transactions, and one blocked writing to a client that does not read (ClientWrite) takes
-- no more. Which sessions LISTEN is not visible to others (pg_listening_channels() is the
-- caller's own), so these are the candidates, longest first; every database counts, as the
-- queue is the server's. Roles without pg_read_all_stats see other roles' sessions without
-- their state, and so not here.
SELECT pid, datname, usename, application_name, host(client_addr), state,
       wait_event_type || ':' || wait_event,
       extract(epoch FROM now() - coalesce(xact_start, state_change))::float8,
       left(query, 200)
  FROM pg_stat_activity
 WHERE pid <> pg_backend_pid()
   AND backend_type = 'client backend'
   AND ((state LIKE 'idle in transaction%%'
         AND xact_start < now() - make_interval(secs => %(after)s))
        OR (wait_event = 'ClientWrite'
            AND state_change < now() - make_interval(secs => %(after)s)))
 ORDER BY coalesce(xact_start, state_change);
