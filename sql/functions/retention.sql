-- Retention (swf_celery/ops/retention.py): finished runs, archives, dead letters and expired
-- results, deleted in batches. Each function deletes at most p_limit rows (one short transaction per call; the caller
-- loops) and returns how many, or -1 when another session is cleaning up right now (a
-- transaction-level advisory try-lock: one cleaner at a time, nobody waits). p_dry: count
-- what would go, delete nothing.
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
    DELETE FROM swf.runs WHERE id IN (
        SELECT id FROM swf.runs
         WHERE status IN ('completed', 'failed', 'cancelled')
           AND coalesce(finished_at, updated_at) < p_before
         LIMIT p_limit FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.retention_runs(timestamptz, integer, boolean) FROM PUBLIC;

-- Broker and messaging archives older than p_before. p_kind: 'dead_letters'
-- (swf.dead_letters), 'acked' (archive_acked copies: the pgmq archives of durable queues and
-- swf.transient_archive), 'channels' (messaging channels' acknowledged messages).
CREATE OR REPLACE FUNCTION swf.retention_archives(p_kind text, p_before timestamptz,
                                                  p_limit integer, p_dry boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_table text;
    v_at text;
    n bigint := 0;
    m bigint;
BEGIN
    PERFORM swf._require_part('clean up');
    IF p_kind NOT IN ('dead_letters', 'acked', 'channels') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('unknown archive kind %L', p_kind);
    END IF;
    IF NOT p_dry AND NOT swf._retention_lock() THEN
        RETURN -1;
    END IF;
    FOR v_table, v_at IN
        SELECT 'swf.dead_letters', 'dead_at' WHERE p_kind = 'dead_letters'
        UNION ALL
        SELECT 'swf.transient_archive', 'archived_at' WHERE p_kind = 'acked'
        UNION ALL
        SELECT format('pgmq.%I', 'a_' || s.pgmq_name), 'archived_at' FROM swf.queues s
         WHERE p_kind = 'acked' AND s.storage = 'pgmq'
        UNION ALL
        SELECT format('pgmq.%I', 'a_' || c.queue_name), 'archived_at' FROM swf.channels c
         WHERE p_kind = 'channels'
    LOOP
        EXIT WHEN NOT p_dry AND n >= p_limit;
        CONTINUE WHEN to_regclass(v_table) IS NULL;
        IF p_dry THEN
            EXECUTE format('SELECT count(*) FROM %s WHERE %I < $1', v_table, v_at)
              INTO m USING p_before;
        ELSE
            EXECUTE format('DELETE FROM %1$s WHERE ctid = ANY (ARRAY(SELECT ctid FROM %1$s '
                           'WHERE %2$I < $1 LIMIT $2))', v_table, v_at)
              USING p_before, p_limit - n;
            GET DIAGNOSTICS m = ROW_COUNT;
        END IF;
        n := n + m;
    END LOOP;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.retention_archives(text, timestamptz, integer, boolean) FROM PUBLIC;

-- Celery results past their expiry: task results, group results and chords whose
-- expires_at passed, and (p_before) those stored without an expiry before p_before.
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
    DELETE FROM swf.chords WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM swf.chords
         WHERE expires_at < now() OR (expires_at IS NULL AND created_at < p_before)
         LIMIT greatest(p_limit - n, 0)));
    GET DIAGNOSTICS m = ROW_COUNT;
    RETURN n + m;
END $$;
REVOKE EXECUTE ON FUNCTION swf.retention_results(timestamptz, integer, boolean) FROM PUBLIC;
