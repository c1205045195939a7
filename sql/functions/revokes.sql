-- Revokes that hold (table: sql/migrations/0009_revoked_tasks.sql). Celery keeps revoked
-- task ids in each worker's memory only; the broker also records every revoke broadcast, and
-- workers load the ids when they start consuming (transport/revokes.py). Rows older than the
-- reading worker's revoke expiry (Celery's CELERY_WORKER_REVOKE_EXPIRES, 3 h by default) are
-- forgotten, as Celery forgets them in memory.

-- Record a revoke of task_ids and delete their queued or delayed messages (not those a live
-- worker holds: its in-memory revoke list, and this table after a restart, handle them).
-- Returns how many messages were deleted.
-- The transaction commits with synchronous_commit on (SET LOCAL, whatever the session's: the
-- broker's connection runs with it off), so a recorded revoke survives a server crash; a
-- function-level SET would be undone before the commit.
-- It runs as its owner: a worker or an operator revokes any task; a client only the tasks
-- it published (their messages, queued or held, say so: headers.by), and may not delete
-- queued messages otherwise. (Celery's revoke broadcast, which a client may publish, still
-- reaches the workers' memory: that is Celery's remote control, not this record.)
CREATE OR REPLACE FUNCTION swf.task_revoke(task_ids text[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_tbl text;
    v_ids text[];
    v_own text[] := '{}';
BEGIN
    IF cardinality(task_ids) IS NULL OR cardinality(task_ids) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM set_config('synchronous_commit', 'on', true);
    IF swf._require_part('revoke a task', 'client', 'worker') = 'client' THEN
        FOR v_tbl IN SELECT swf._queue_tables() LOOP
            EXECUTE format('SELECT array_agg(DISTINCT headers ->> ''task_id'') FROM %s '
                           'WHERE (headers ->> ''task_id'') = ANY ($1) '
                           'AND headers ->> ''by'' = $2', v_tbl)
              INTO v_ids USING task_ids, session_user::text;
            v_own := v_own || coalesce(v_ids, '{}');
        END LOOP;
        task_ids := v_own;
    END IF;
    INSERT INTO swf.revoked_tasks AS r (task_id)
    SELECT DISTINCT t FROM unnest(task_ids) AS t WHERE t IS NOT NULL
    ON CONFLICT (task_id) DO UPDATE SET revoked_at = clock_timestamp();
    RETURN swf.queue_remove_tasks(task_ids);
END $$;
REVOKE EXECUTE ON FUNCTION swf.task_revoke(text[]) FROM PUBLIC;

-- The revokes younger than expires_s seconds, newest first (at most max_n), with their age
-- in seconds; older rows are deleted on the way.
CREATE OR REPLACE FUNCTION swf.task_revokes(expires_s double precision, max_n integer)
RETURNS TABLE (task_id text, age_s double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('load revokes', 'client', 'worker');
    DELETE FROM swf.revoked_tasks r
     WHERE r.revoked_at < clock_timestamp() - make_interval(secs => expires_s);
    RETURN QUERY
        SELECT r.task_id, extract(epoch FROM clock_timestamp() - r.revoked_at)::double precision
          FROM swf.revoked_tasks r
         ORDER BY r.revoked_at DESC
         LIMIT max_n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.task_revokes(double precision, integer) FROM PUBLIC;
