-- Retention (swf_celery/ops/retention.py): finished runs, task graphs, dynamic flows nothing
-- refers to, archives, dead letters, unacknowledged channel messages, expired results and
-- durable queues nobody uses, deleted in batches. Each function deletes at most p_limit rows
-- (one short transaction per call; the caller loops) and returns how many, or -1 when another
-- session is cleaning up right now (a transaction-level advisory try-lock: one cleaner at a
-- time, nobody waits). p_dry: count what would go, delete nothing. Cleaning up is an
-- operator's (swf._require_part).
CREATE OR REPLACE FUNCTION swf._retention_lock() RETURNS boolean
LANGUAGE sql AS $$ SELECT pg_try_advisory_xact_lock(hashtext('swf-celery:retention')) $$;

-- Finished runs (completed, failed, cancelled) finished before p_before, with their step
-- states and step tasks (ON DELETE CASCADE).
CREATE OR REPLACE FUNCTION swf.retention_runs(p_before timestamptz, p_limit integer, p_dry boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM swf._require_part('clean up');
    IF p_dry THEN
        RETURN (SELECT count(*) FROM swf.runs
                 WHERE status IN ('completed', 'failed', 'cancelled')
                   AND coalesce(finished_at, updated_at) < p_before);
    END IF;
    IF NOT swf._retention_lock() THEN
        RETURN -1;
    END IF;
    -- A dynamic flow remembers the start of its newest deleted run (swf.retention_flows keeps
    -- it that long after). A flow locked right now is being run, edited or deleted: skipped.
    WITH gone AS (
        DELETE FROM swf.runs WHERE id IN (
            SELECT id FROM swf.runs
             WHERE status IN ('completed', 'failed', 'cancelled')
               AND coalesce(finished_at, updated_at) < p_before
             LIMIT p_limit FOR UPDATE SKIP LOCKED)
        RETURNING flow_id, inserted_at
    ), used AS (
        SELECT flow_id, max(inserted_at) AS started FROM gone
         WHERE flow_id IS NOT NULL GROUP BY flow_id
    ), marked AS (
        UPDATE swf.flows f SET last_used_at = u.started FROM used u
         WHERE f.id = u.flow_id AND f.id IN (
               SELECT id FROM swf.flows WHERE id IN (SELECT flow_id FROM used)
                  AND dynamic FOR NO KEY UPDATE SKIP LOCKED)
           AND f.last_used_at < u.started
    )
    SELECT count(*) INTO n FROM gone;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.retention_runs(timestamptz, integer, boolean) FROM PUBLIC;

-- Broker and messaging stores older than p_before. p_kind: 'dead_letters' (swf.dead_letters),
-- 'acked' (archive_acked copies: the pgmq archives of durable queues and
-- swf.transient_archive), 'channels' (messaging channels' acknowledged messages),
-- 'channel_pending' (channels' messages never acknowledged, by when they were sent; their vt,
-- set when they were sent and indexed, narrows the scan).
CREATE OR REPLACE FUNCTION swf.retention_archives(p_kind text, p_before timestamptz,
                                                  p_limit integer, p_dry boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_table text;
    v_old text;
    n bigint := 0;
    m bigint;
BEGIN
    PERFORM swf._require_part('clean up');
    IF p_kind NOT IN ('dead_letters', 'acked', 'channels', 'channel_pending') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('unknown archive kind %L', p_kind);
    END IF;
    IF NOT p_dry AND NOT swf._retention_lock() THEN
        RETURN -1;
    END IF;
    -- v_old: the condition (constant text of this function) on a row too old to keep.
    FOR v_table, v_old IN
        SELECT 'swf.dead_letters', 'dead_at < $1' WHERE p_kind = 'dead_letters'
        UNION ALL
        SELECT 'swf.transient_archive', 'archived_at < $1' WHERE p_kind = 'acked'
        UNION ALL
        SELECT format('pgmq.%I', 'a_' || s.pgmq_name), 'archived_at < $1' FROM swf.queues s
         WHERE p_kind = 'acked' AND s.storage = 'pgmq'
        UNION ALL
        SELECT format('pgmq.%I', 'a_' || c.queue_name), 'archived_at < $1' FROM swf.channels c
         WHERE p_kind = 'channels'
        UNION ALL
        SELECT format('pgmq.%I', 'q_' || c.queue_name), 'vt < $1 AND enqueued_at < $1'
          FROM swf.channels c
         WHERE p_kind = 'channel_pending'
    LOOP
        EXIT WHEN NOT p_dry AND n >= p_limit;
        CONTINUE WHEN to_regclass(v_table) IS NULL;
        IF p_dry THEN
            EXECUTE format('SELECT count(*) FROM %s WHERE %s', v_table, v_old)
              INTO m USING p_before;
        ELSE
            EXECUTE format('DELETE FROM %1$s WHERE ctid = ANY (ARRAY(SELECT ctid FROM %1$s '
                           'WHERE %2$s LIMIT $2))', v_table, v_old)
              USING p_before, p_limit - n;
            GET DIAGNOSTICS m = ROW_COUNT;
        END IF;
        n := n + m;
    END LOOP;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.retention_archives(text, timestamptz, integer, boolean) FROM PUBLIC;

-- Celery results past their expiry: task results, group results and chords whose
-- expires_at passed, and (p_before) those stored without an expiry before p_before. A chord
-- still collecting its header becomes a marker (swf.expire_chords) that a late part fails.
CREATE OR REPLACE FUNCTION swf.retention_results(p_before timestamptz, p_limit integer, p_dry boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    n bigint := 0;
    m bigint;
BEGIN
    PERFORM swf._require_part('clean up');
    IF p_dry THEN
        RETURN (SELECT count(*) FROM swf.task_results
                 WHERE expires_at < now() OR (expires_at IS NULL AND date_done < p_before))
             + (SELECT count(*) FROM swf.group_results
                 WHERE expires_at < now() OR (expires_at IS NULL AND created_at < p_before))
             + (SELECT count(*) FROM swf.chords
                 WHERE expires_at < now() OR (expires_at IS NULL AND created_at < p_before));
    END IF;
    IF NOT swf._retention_lock() THEN
        RETURN -1;
    END IF;
    DELETE FROM swf.task_results WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM swf.task_results
         WHERE expires_at < now() OR (expires_at IS NULL AND date_done < p_before)
         LIMIT p_limit));
    GET DIAGNOSTICS m = ROW_COUNT;
    n := n + m;
    DELETE FROM swf.group_results WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM swf.group_results
         WHERE expires_at < now() OR (expires_at IS NULL AND created_at < p_before)
         LIMIT greatest(p_limit - n, 0)));
    GET DIAGNOSTICS m = ROW_COUNT;
    n := n + m;
    -- A chord whose header is still incomplete keeps a marker (see swf.expire_chords).
    RETURN n + swf.expire_chords(greatest(p_limit - n, 0)::integer, p_before);
END $$;
REVOKE EXECUTE ON FUNCTION swf.retention_results(timestamptz, integer, boolean) FROM PUBLIC;

-- The task graphs retention may delete (swf.retention_task_graphs): not updated since
-- p_before, and the run they started last is neither in progress nor paused.
CREATE OR REPLACE FUNCTION swf._expired_task_graphs(p_before timestamptz)
RETURNS TABLE (id uuid)
LANGUAGE sql STABLE AS $$
    SELECT g.id FROM swf.task_graphs g
     WHERE g.updated_at < p_before
       AND NOT EXISTS (SELECT 1 FROM swf.runs r WHERE r.id = g.last_run_id
                          AND r.status IN ('in_progress', 'paused'))
$$;

-- Task graphs (goals) not updated since p_before, unless the run they started last is still in
-- progress or paused. Their dynamic flows then go with swf.retention_flows.
CREATE OR REPLACE FUNCTION swf.retention_task_graphs(p_before timestamptz, p_limit integer,
                                                     p_dry boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM swf._require_part('clean up');
    IF p_dry THEN
        RETURN (SELECT count(*) FROM swf._expired_task_graphs(p_before));
    END IF;
    IF NOT swf._retention_lock() THEN
        RETURN -1;
    END IF;
    DELETE FROM swf.task_graphs WHERE id IN (
        SELECT g.id FROM swf.task_graphs g
         WHERE g.id IN (SELECT id FROM swf._expired_task_graphs(p_before))
         LIMIT p_limit FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.retention_task_graphs(timestamptz, integer, boolean) FROM PUBLIC;

-- The dynamic flows retention may delete (swf.retention_flows): last used before p_before,
-- given no step since, and named by no run and no task graph.
CREATE OR REPLACE FUNCTION swf._unused_flows(p_before timestamptz)
RETURNS TABLE (id uuid)
LANGUAGE sql STABLE AS $$
    SELECT f.id FROM swf.flows f
     WHERE f.dynamic AND f.last_used_at < p_before
       AND NOT EXISTS (SELECT 1 FROM swf.flow_steps s
                        WHERE s.flow_id = f.id AND s.created_at >= p_before)
       AND NOT EXISTS (SELECT 1 FROM swf.runs r WHERE r.flow_id = f.id)
       AND NOT EXISTS (SELECT 1 FROM swf.task_graphs g WHERE g.workflow_id = f.slug)
$$;

-- Dynamic flows (FlowBuilder, goals) nothing refers to any more: no run of theirs is left (of
-- any status: finished runs go with swf.retention_runs), no task graph names them, and they
-- were created, given a step or last run (the newest run retention deleted) before p_before.
-- Code-defined flows are the code's catalogue and stay. A flow locked right now (a run
-- starting, a step being added) is skipped.
CREATE OR REPLACE FUNCTION swf.retention_flows(p_before timestamptz, p_limit integer,
                                               p_dry boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM swf._require_part('clean up');
    IF p_dry THEN
        RETURN (SELECT count(*) FROM swf._unused_flows(p_before));
    END IF;
    IF NOT swf._retention_lock() THEN
        RETURN -1;
    END IF;
    DELETE FROM swf.flows WHERE id IN (  -- its steps go with it (ON DELETE CASCADE)
        SELECT f.id FROM swf.flows f
         WHERE f.id IN (SELECT id FROM swf._unused_flows(p_before))
         LIMIT p_limit FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.retention_flows(timestamptz, integer, boolean) FROM PUBLIC;

-- The shortest age at which a durable queue counts as unused, whatever p_before says:
-- consumers mark the queues they consume every minute (swf.queue_touch), so a queue a live
-- worker consumes is never older than a few minutes.
CREATE OR REPLACE FUNCTION swf._retention_queue_floor() RETURNS interval
LANGUAGE sql IMMUTABLE AS $$ SELECT interval '1 hour' $$;

-- Durable queues nobody uses: declared durable (not expiring: those are reaped by their
-- x-expires), created and last active (declared, or marked by a consumer: swf.queue_arm,
-- swf.queue_touch) before p_before (at most now - swf._retention_queue_floor()), and empty:
-- no message waiting, delayed or held, none in its archive. Each is checked again under
-- its row lock and an ACCESS EXCLUSIVE lock of its tables (taken under a short lock_timeout;
-- a queue in use right now is skipped), then dropped with its bindings (swf.queue_drop).
-- p_limit queues at most per call: each drop is DDL.
CREATE OR REPLACE FUNCTION swf.retention_queues(p_before timestamptz, p_limit integer,
                                                p_dry boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_before timestamptz := least(p_before, clock_timestamp() - swf._retention_queue_floor());
    v_timeout text := current_setting('lock_timeout');
    q swf.queues;
    v_empty boolean;
    n bigint := 0;
BEGIN
    PERFORM swf._require_part('clean up');
    IF NOT p_dry AND NOT swf._retention_lock() THEN
        RETURN -1;
    END IF;
    FOR q IN SELECT * FROM swf.queues
              WHERE storage = 'pgmq' AND expires_ms IS NULL
                AND last_active < v_before AND created_at < v_before
              ORDER BY last_active, id
    LOOP
        EXIT WHEN NOT p_dry AND n >= p_limit;
        CONTINUE WHEN to_regclass(format('pgmq.%I', 'q_' || q.pgmq_name)) IS NULL
                   OR to_regclass(format('pgmq.%I', 'a_' || q.pgmq_name)) IS NULL;
        BEGIN
            IF NOT p_dry THEN
                PERFORM 1 FROM swf.queues s
                 WHERE s.id = q.id AND s.last_active < v_before FOR UPDATE SKIP LOCKED;
                CONTINUE WHEN NOT FOUND;
                PERFORM set_config('lock_timeout', swf._ddl_lock_timeout(), true);
                EXECUTE format('LOCK TABLE pgmq.%I, pgmq.%I IN ACCESS EXCLUSIVE MODE',
                               'q_' || q.pgmq_name, 'a_' || q.pgmq_name);
                PERFORM set_config('lock_timeout', v_timeout, true);
            END IF;
            EXECUTE format('SELECT NOT EXISTS (SELECT FROM pgmq.%I) '
                           'AND NOT EXISTS (SELECT FROM pgmq.%I)',
                           'q_' || q.pgmq_name, 'a_' || q.pgmq_name) INTO v_empty;
            CONTINUE WHEN NOT v_empty;
            IF NOT p_dry THEN
                PERFORM swf.queue_drop(q.name);
            END IF;
            n := n + 1;
        EXCEPTION WHEN lock_not_available THEN
            -- In use right now (or a pg_dump holds it): not unused; the next pass looks again.
            NULL;
        END;
    END LOOP;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.retention_queues(timestamptz, integer, boolean) FROM PUBLIC;
