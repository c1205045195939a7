-- Flow control at delivery and idempotent publish (tables: sql/migrations/0019_limits.sql).
-- The limited read itself is swf.queue_read_limited in sql/functions/queues.sql; this file
-- holds what it shares with publishers and operators. Broker layer: nothing here names a
-- workflow, result or goal object (a run's idempotency key is only an id to this file).
--
-- A flow key is a name a message carries in its pgmq headers, with the limits its publisher
-- gave it ("flow": {"key", "rate" (tokens per second), "burst", "concurrency"};
-- swf.queue_headers keeps only well-typed values). Rate limits are token buckets, one row of
-- swf.flow_keys per key, refilled as time passes and taken from by the read that delivers;
-- a concurrency limit counts the key's deliveries held now (read, visibility timeout not
-- over), so a killed worker's slots come back when its deliveries' timeout ends. A hold
-- (swf.hold_key) stops a key's deliveries until a time. Only durable queues are limited.

-- Advisory lock namespace of a flow key's turn in a read (first key of the two-key form):
-- 'swfk'. Readers only try it (a key another reader is serving is skipped, never waited on).
CREATE OR REPLACE FUNCTION swf._flow_lock_space() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1937204843 $$;

-- Keys scanned at most per read or arm: a queue with more keys than this serves them over
-- several reads (each read starts where the last one stopped).
CREATE OR REPLACE FUNCTION swf._flow_scan_limit() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1000 $$;

-- The tokens of a key's bucket now: what was left, refilled at p_rate per second up to
-- p_burst (a key never seen starts full).
CREATE OR REPLACE FUNCTION swf._flow_tokens(k swf.flow_keys, p_rate double precision,
                                            p_burst double precision)
RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN k.key IS NULL OR k.tokens IS NULL THEN p_burst
                ELSE least(p_burst, k.tokens + p_rate * greatest(0, extract(epoch FROM
                           clock_timestamp() - k.refilled_at))) END
$$;

-- The burst of a flow: its own, else one second's worth (at least one token).
CREATE OR REPLACE FUNCTION swf._flow_burst(p_flow jsonb) RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce((p_flow ->> 'burst')::double precision,
                    greatest(1, (p_flow ->> 'rate')::double precision))
$$;

-- The flow object of a kombu message's pgmq headers, from its header "swf_flow" (set by the
-- publisher, swf_celery/transport/flow.py): a key of 1..255 bytes, a rate and burst > 0, a
-- concurrency >= 1; anything else is left out, so a malformed header never breaks a read.
CREATE OR REPLACE FUNCTION swf.flow_of(message jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(f -> 'key') = 'string'
                     AND octet_length(f ->> 'key') BETWEEN 1 AND 255 THEN
        jsonb_strip_nulls(jsonb_build_object(
            'key', f ->> 'key',
            'rate', CASE WHEN jsonb_typeof(f -> 'rate') = 'number'
                              AND (f ->> 'rate')::double precision > 0 THEN f -> 'rate' END,
            'burst', CASE WHEN jsonb_typeof(f -> 'burst') = 'number'
                               AND (f ->> 'burst')::double precision >= 1 THEN f -> 'burst' END,
            'concurrency', CASE WHEN jsonb_typeof(f -> 'concurrency') = 'number'
                                     AND (f ->> 'concurrency')::numeric >= 1
                                THEN to_jsonb(floor((f ->> 'concurrency')::numeric)::integer)
                           END))
    END
      FROM (SELECT message #> '{headers,swf_flow}' AS f) x
$$;

-- Mark a durable queue as limited (its messages may carry flow keys): its consumers switch to
-- the limited read, and its table gets the indexes that read uses (under a short
-- lock_timeout). Called by a publisher before its first message with a key, and by a
-- consumer that finds a queue marked without its indexes: a mark made inside a transaction
-- that already wrote to the queue cannot index it yet (its deferred wake-up trigger is
-- pending), so it marks only; the limited read is correct without the indexes, only slower.
CREATE OR REPLACE FUNCTION swf.queue_mark_limited(p_queue text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    q swf.queues := swf.queue_ensure(p_queue);  -- checks the caller's part
    v_tbl text;
    v_old_timeout text;
BEGIN
    IF q.storage <> 'pgmq' THEN
        RETURN false;  -- transient queues (replies, broadcasts) are never limited
    END IF;
    v_tbl := 'q_' || q.pgmq_name;
    IF q.limited AND to_regclass(format('pgmq.%I', v_tbl || '_free_idx')) IS NOT NULL THEN
        RETURN true;
    END IF;
    v_old_timeout := current_setting('lock_timeout');
    BEGIN
        PERFORM set_config('lock_timeout', swf._ddl_lock_timeout(), true);
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgmq.%I '
                       '((headers #>> ''{flow,key}''), msg_id) WHERE headers ? ''flow''',
                       v_tbl || '_flow_idx', v_tbl);
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgmq.%I '
                       '((headers #>> ''{flow,key}''), vt) WHERE headers ? ''flow''',
                       v_tbl || '_flow_vt_idx', v_tbl);
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgmq.%I '
                       '((coalesce((headers ->> ''priority'')::integer, 0)), msg_id) '
                       'WHERE (headers ? ''flow'') IS NOT TRUE', v_tbl || '_free_idx', v_tbl);
    EXCEPTION WHEN object_in_use OR lock_not_available THEN
        RAISE NOTICE 'swf.queue_mark_limited: queue % is in use; its consumers index it', p_queue;
    END;
    PERFORM set_config('lock_timeout', v_old_timeout, true);
    IF NOT q.limited THEN
        UPDATE swf.queues SET limited = true WHERE id = q.id;
    END IF;
    RETURN true;
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_mark_limited(text) FROM PUBLIC;

-- Which of p_queues are limited (a consumer re-reads this every few seconds).
CREATE OR REPLACE FUNCTION swf.queue_limited(p_queues text[]) RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT name FROM swf.queues WHERE name = ANY (p_queues) AND limited
$$;

-- Hold a key: its messages are not delivered before p_until (a 429 with Retry-After, an
-- outage). A later hold replaces an earlier one. Workers (from inside a task) and operators.
CREATE OR REPLACE FUNCTION swf.hold_key(p_key text, p_until timestamptz,
                                        p_reason text DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('hold a flow key', 'worker');
    IF p_key IS NULL OR octet_length(p_key) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'swf.hold_key: the key must be a text of 1 to 255 bytes';
    END IF;
    IF p_until IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'swf.hold_key: until must be a time (release_key ends a hold)';
    END IF;
    INSERT INTO swf.flow_keys AS k (key, held_until, held_reason, held_by)
    VALUES (p_key, p_until, left(p_reason, 500), session_user)
    ON CONFLICT (key) DO UPDATE SET held_until = EXCLUDED.held_until,
                                    held_reason = EXCLUDED.held_reason,
                                    held_by = EXCLUDED.held_by;
    RETURN p_until;
END $$;
REVOKE EXECUTE ON FUNCTION swf.hold_key(text, timestamptz, text) FROM PUBLIC;

-- End a key's hold now; false when it was not held.
CREATE OR REPLACE FUNCTION swf.release_key(p_key text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('release a flow key', 'worker');
    UPDATE swf.flow_keys SET held_until = NULL, held_reason = NULL, held_by = NULL
     WHERE key = p_key AND held_until > clock_timestamp();
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM swf._queue_wake(id) FROM swf.queues WHERE limited ORDER BY id;
    RETURN true;
END $$;
REVOKE EXECUTE ON FUNCTION swf.release_key(text) FROM PUBLIC;

-- Claim an idempotency key for p_id (a task id, a run id) for p_window_s seconds. Returns
-- the id that holds the key: p_id when the claim is new (or the key's window ended, or p_id
-- holds it already), else the first claimant's. A concurrent claim of the same key waits
-- for the first one's transaction: its commit makes the first id win, its rollback frees
-- the key. Claim in the transaction that publishes, so the key and the message commit (or
-- vanish) together.
CREATE OR REPLACE FUNCTION swf.idempotency_claim(p_scope text, p_key text, p_id text,
                                                 p_window_s double precision)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_id text;
BEGIN
    PERFORM swf._require_part('publish with an idempotency key', 'client', 'worker');
    IF p_key IS NULL OR octet_length(p_key) NOT BETWEEN 1 AND 512 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'idempotency key must be a text of 1 to 512 bytes';
    END IF;
    IF p_window_s IS NULL OR NOT p_window_s > 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('idempotency window must be a number of seconds > 0, not %s',
                             coalesce(p_window_s::text, 'NULL'));
    END IF;
    INSERT INTO swf.idempotency_keys AS k (scope, key, id, expires_at)
    VALUES (p_scope, p_key, p_id, clock_timestamp() + make_interval(secs => p_window_s))
    ON CONFLICT (scope, key) DO UPDATE
       SET id = EXCLUDED.id, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
     WHERE k.expires_at <= clock_timestamp()
    RETURNING k.id INTO v_id;
    IF v_id IS NULL THEN  -- held (and now locked by us until commit): the holder's id
        SELECT k.id INTO v_id FROM swf.idempotency_keys k
         WHERE k.scope = p_scope AND k.key = p_key;
    END IF;
    RETURN v_id;
END $$;
REVOKE EXECUTE ON FUNCTION swf.idempotency_claim(text, text, text, double precision) FROM PUBLIC;

-- Forget idempotency keys whose window ended (retention; operators).
CREATE OR REPLACE FUNCTION swf.idempotency_expire(p_limit integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    PERFORM swf._require_part('expire idempotency keys');
    DELETE FROM swf.idempotency_keys
     WHERE ctid = ANY (ARRAY(SELECT ctid FROM swf.idempotency_keys
                              WHERE expires_at <= clock_timestamp() LIMIT p_limit));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.idempotency_expire(integer) FROM PUBLIC;

-- The flow keys of the limited queues now: per queue and key, messages queued and
-- deliveries held, the limits its newest message carries, and the key's hold and tokens
-- (the console, `swf-celery keys`). Scans the limited queues' keyed messages: for people,
-- not for the hot path. Runs as its caller (who must be allowed to read the queues).
CREATE OR REPLACE FUNCTION swf.flow_key_stats(p_limit integer DEFAULT 200)
RETURNS TABLE (queue text, key text, queued bigint, held bigint, rate double precision,
               concurrency integer, held_until timestamptz, held_reason text,
               tokens double precision)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    q swf.queues;
BEGIN
    FOR q IN SELECT * FROM swf.queues WHERE limited AND storage = 'pgmq' ORDER BY name LOOP
        RETURN QUERY EXECUTE format(
            'SELECT $1, s.key, s.queued, s.held, (s.flow ->> ''rate'')::double precision, '
            '       (s.flow ->> ''concurrency'')::integer, k.held_until, k.held_reason, k.tokens '
            '  FROM (SELECT m.headers #>> ''{flow,key}'' AS key, '
            '               count(*) FILTER (WHERE m.read_ct = 0 OR m.vt <= clock_timestamp()) '
            '                   AS queued, '
            '               count(*) FILTER (WHERE m.read_ct > 0 AND m.vt > clock_timestamp()) '
            '                   AS held, '
            '               (array_agg(m.headers -> ''flow'' ORDER BY m.msg_id DESC))[1] AS flow '
            '          FROM pgmq.%I m WHERE m.headers ? ''flow'' GROUP BY 1) s '
            '  LEFT JOIN swf.flow_keys k ON k.key = s.key '
            ' ORDER BY s.queued + s.held DESC, s.key LIMIT $2', 'q_' || q.pgmq_name)
          USING q.name, p_limit;
    END LOOP;
END $$;
