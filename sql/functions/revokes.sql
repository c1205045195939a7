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

-- Revokes by stamped header (table: sql/migrations/0017_stamped_revokes.sql). Celery's
-- revoke_by_stamped_headers broadcast names stamps, not tasks: every task whose stamps match,
-- queued or sent later, is to be discarded. The transport records each broadcast here;
-- a worker applies each record once to its memory (Celery's worker_state.revoked_stamps), at
-- the start of consuming and before it hands over a stamped message (transport/revokes.py).

-- Record a revoke by stamped header: headers maps each stamp name to the value or list of
-- values revoked, as Celery's broadcast carries it. Returns the record's id. Committed with
-- synchronous_commit on, as swf.task_revoke is. A client may record one for any stamps: the
-- broadcast it comes with reaches every running worker whoever sent it (Celery's remote
-- control), and a stamp is not tied to one publisher's tasks; the record makes it reach the
-- workers that start later, and the messages read before the broadcast.
CREATE OR REPLACE FUNCTION swf.task_revoke_stamped(headers jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_id bigint;
BEGIN
    IF headers IS NULL OR jsonb_typeof(headers) <> 'object' OR headers = '{}' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('swf.task_revoke_stamped: headers must be an object of stamp '
                             'name -> revoked values, not %s', coalesce(headers::text, 'NULL'));
    END IF;
    PERFORM swf._require_part('revoke tasks by stamped header', 'client', 'worker');
    PERFORM set_config('synchronous_commit', 'on', true);
    INSERT INTO swf.revoked_stamps (headers) VALUES (task_revoke_stamped.headers)
    RETURNING id INTO v_id;
    RETURN v_id;
END $$;
REVOKE EXECUTE ON FUNCTION swf.task_revoke_stamped(jsonb) FROM PUBLIC;

-- The revokes by stamped header recorded after record after_id and younger than expires_s
-- seconds, oldest first (the newest max_n of them), with their age in seconds; older rows
-- are deleted on the way.
CREATE OR REPLACE FUNCTION swf.task_stamp_revokes(after_id bigint, expires_s double precision,
                                                  max_n integer)
RETURNS TABLE (id bigint, headers jsonb, age_s double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('load revokes', 'client', 'worker');
    DELETE FROM swf.revoked_stamps r
     WHERE r.revoked_at < clock_timestamp() - make_interval(secs => expires_s);
    RETURN QUERY
        SELECT n.id, n.headers, n.age_s FROM (
            SELECT r.id, r.headers,
                   extract(epoch FROM clock_timestamp() - r.revoked_at)::double precision AS age_s
              FROM swf.revoked_stamps r
             WHERE r.id > coalesce(after_id, 0)
             ORDER BY r.id DESC
             LIMIT max_n) n
         ORDER BY n.id;
END $$;
REVOKE EXECUTE ON FUNCTION swf.task_stamp_revokes(bigint, double precision, integer) FROM PUBLIC;
