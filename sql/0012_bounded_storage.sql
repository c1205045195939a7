-- 0012: bounded storage and calm operations.
--
-- 1. Transient queues without DDL. Queues declared with x-expires or auto_delete (Celery's
--    pidbox, reply and event queues, worker_direct queues) keep their messages in ONE shared
--    table, swf.transient_messages, keyed by queue name. Declaring, expiring or deleting
--    such a queue inserts or deletes rows (swf.queues, swf.queue_bindings), never a table:
--    the catalog does not grow with every worker or monitor start. Their pgmq name starts
--    with 't_' (durable queues: 'k_') and names no table. A publisher never recreates an
--    expired transient queue: its messages are dropped (FK to swf.queues), as on Redis.
-- 2. Safe DDL. Dropping a pgmq table (queue_delete of a durable queue, reaping a legacy
--    expiring queue) and creating one run under a short lock_timeout; a drop that cannot get
--    its lock is skipped and retried on the next reap pass (or raises lock_not_available
--    for the caller to retry), so it never queues an ACCESS EXCLUSIVE request behind a
--    pg_dump and blocks the hot path.
-- 3. Indexed, atomic cancels. Every queue table (and the shared one) has expression indexes
--    on its messages' task id and root id; queue_remove_tasks / queue_remove_root /
--    cancel_canvas are index probes, and cancel_canvas classifies and deletes each table's
--    messages in one statement.
-- 4. Retention: swf.retention_* functions delete finished runs, archives, dead letters and
--    expired results in batches (swf_celery/ops/retention.py).

-- -- transient queues ------------------------------------------------------------------

CREATE TABLE swf.transient_messages (
    msg_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue        text NOT NULL REFERENCES swf.queues (name) ON DELETE CASCADE,
    priority     smallint NOT NULL DEFAULT 0,
    read_ct      integer NOT NULL DEFAULT 0,
    enqueued_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    vt           timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_read_at timestamptz,
    message      jsonb NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX transient_messages_read ON swf.transient_messages (queue, priority, msg_id);
CREATE INDEX transient_messages_task ON swf.transient_messages ((headers ->> 'task_id'));
CREATE INDEX transient_messages_root ON swf.transient_messages ((headers ->> 'root_id'));
COMMENT ON TABLE swf.transient_messages IS
    'messages of transient queues (x-expires / auto_delete): pidbox, reply, event queues';

-- Dead letters and archive_acked copies of transient queues (they outlive their queue).
CREATE TABLE swf.transient_archive (
    msg_id       bigint PRIMARY KEY,
    queue        text NOT NULL,
    read_ct      integer NOT NULL,
    enqueued_at  timestamptz NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    vt           timestamptz NOT NULL,
    message      jsonb NOT NULL,
    headers      jsonb NOT NULL
);
CREATE INDEX transient_archive_queue ON swf.transient_archive (queue, msg_id);
CREATE INDEX transient_archive_archived_at ON swf.transient_archive (archived_at);

CREATE FUNCTION swf._queue_is_transient(q swf.queues) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT left(q.pgmq_name, 2) = 't_' $$;

-- Names Celery gives to queues it lets expire: a publisher that finds such a queue missing
-- drops the message instead of creating a permanent queue without bindings.
CREATE FUNCTION swf.queue_is_transient_name(p_name text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT p_name LIKE '%.pidbox' OR p_name LIKE 'celeryev.%' OR p_name LIKE '%.dq2'
$$;

-- Wake-up trigger of the shared table: as swf._queue_wakeup, per row's queue.
CREATE FUNCTION swf._transient_wakeup() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
BEGIN
    SELECT * INTO q FROM swf.queues WHERE name = NEW.queue;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(swf._queue_lock_space(), q.id);
    UPDATE swf.queue_waiters SET waiting = false WHERE queue_id = q.id AND waiting;
    IF FOUND THEN
        PERFORM pg_notify('swfq_' || q.pgmq_name, '');
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER swf_wakeup AFTER INSERT ON swf.transient_messages
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION swf._transient_wakeup();

-- Run DDL of a queue under a short lock_timeout, restoring the caller's setting after.
CREATE FUNCTION swf._ddl_lock_timeout() RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT '200ms'::text $$;

-- Indexes every durable queue table carries (priority read order; cancels by task/root id).
CREATE FUNCTION swf._queue_indexes(p_pgmq text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgmq.%I '
                   '((coalesce((headers->>''priority'')::integer, 0)), msg_id)',
                   'q_' || p_pgmq || '_pri_idx', 'q_' || p_pgmq);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgmq.%I ((headers ->> ''task_id''))',
                   'q_' || p_pgmq || '_task_idx', 'q_' || p_pgmq);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgmq.%I ((headers ->> ''root_id''))',
                   'q_' || p_pgmq || '_root_idx', 'q_' || p_pgmq);
END $$;

-- Map a kombu queue name, creating the queue when missing. p_expires_ms > 0 (x-expires, or
-- auto_delete: the transport passes a default): the queue is transient, a row here and its
-- messages in swf.transient_messages. 0: declared durable, a pgmq queue (DDL under a short
-- lock_timeout: lock_not_available is raised for the caller to retry). NULL: needed by a
-- publisher; created durable, except that a missing queue whose name is one Celery lets
-- expire (pidbox, reply, event queues) is not recreated without its bindings and expiry:
-- undefined_object, and the publisher drops the message.
CREATE OR REPLACE FUNCTION swf.queue_ensure(p_name text, p_expires_ms bigint DEFAULT NULL)
RETURNS swf.queues
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    v_pgmq text;
    v_other text;
    v_old_timeout text;
BEGIN
    SELECT * INTO q FROM swf.queues WHERE name = p_name;
    IF FOUND THEN
        IF p_expires_ms > 0 AND q.expires_ms IS NOT NULL
           AND q.last_active < clock_timestamp() - interval '1 second' THEN
            UPDATE swf.queues SET last_active = clock_timestamp() WHERE id = q.id;
        END IF;
        RETURN q;
    END IF;
    PERFORM swf.queue_check_name(p_name);
    IF p_expires_ms IS NULL AND swf.queue_is_transient_name(p_name) THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('queue %L expired (or was deleted); it is not recreated '
                             'without its bindings', p_name);
    END IF;
    v_pgmq := swf.queue_pgmq_name(p_name);
    IF p_expires_ms > 0 THEN
        v_pgmq := 't' || substr(v_pgmq, 2);
    END IF;
    SELECT name INTO v_other FROM swf.queues WHERE pgmq_name = v_pgmq;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '23505',
            MESSAGE = format('queue names %L and %L map to the same pgmq queue %s',
                             p_name, v_other, v_pgmq);
    END IF;
    INSERT INTO swf.queues (name, pgmq_name, expires_ms)
    VALUES (p_name, v_pgmq, nullif(p_expires_ms, 0))
    ON CONFLICT (name) DO NOTHING
    RETURNING * INTO q;
    IF NOT FOUND THEN  -- created concurrently (we waited for that transaction to commit)
        SELECT * INTO q FROM swf.queues WHERE name = p_name;
        RETURN q;
    END IF;
    INSERT INTO swf.queue_waiters (queue_id) VALUES (q.id) ON CONFLICT DO NOTHING;
    IF swf._queue_is_transient(q) THEN
        RETURN q;
    END IF;
    v_old_timeout := current_setting('lock_timeout');
    PERFORM set_config('lock_timeout', swf._ddl_lock_timeout(), true);
    PERFORM pgmq.create(q.pgmq_name);
    PERFORM swf._queue_indexes(q.pgmq_name);
    EXECUTE format('CREATE CONSTRAINT TRIGGER swf_wakeup AFTER INSERT ON pgmq.%I '
                   'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW '
                   'EXECUTE FUNCTION swf._queue_wakeup(%s)', 'q_' || q.pgmq_name, q.id);
    PERFORM set_config('lock_timeout', v_old_timeout, true);
    RETURN q;
END $$;

CREATE OR REPLACE FUNCTION swf.queue_send(queue text, message jsonb, delay_seconds integer DEFAULT 0)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    v_msg jsonb := queue_send.message;
    v_headers jsonb;
    v_id bigint;
BEGIN
    IF v_msg IS NULL OR jsonb_typeof(v_msg) <> 'object' OR NOT v_msg ? 'body' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'swf.queue_send: message must be a kombu message object with "body", '
                      '"content-type", "headers" and "properties"';
    END IF;
    IF delay_seconds IS NULL OR delay_seconds < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('swf.queue_send: delay_seconds must be >= 0, not %s', delay_seconds);
    END IF;
    q := swf.queue_ensure(queue_send.queue);
    IF jsonb_typeof(v_msg -> 'properties') IS DISTINCT FROM 'object' THEN
        v_msg := jsonb_set(v_msg, '{properties}', '{}');
    END IF;
    IF jsonb_typeof(v_msg -> 'headers') IS DISTINCT FROM 'object' THEN
        v_msg := jsonb_set(v_msg, '{headers}', '{}');
    END IF;
    IF v_msg #>> '{properties,delivery_tag}' IS NULL THEN
        v_msg := jsonb_set(v_msg, '{properties,delivery_tag}', to_jsonb(gen_random_uuid()::text));
    END IF;
    IF jsonb_typeof(v_msg #> '{properties,delivery_info}') IS DISTINCT FROM 'object' THEN
        v_msg := jsonb_set(v_msg, '{properties,delivery_info}',
                           jsonb_build_object('exchange', '', 'routing_key', queue_send.queue));
    END IF;
    v_headers := swf.queue_headers(v_msg);
    IF swf._queue_is_transient(q) THEN
        INSERT INTO swf.transient_messages (queue, priority, vt, message, headers)
        VALUES (q.name, (v_headers ->> 'priority')::smallint,
                clock_timestamp() + make_interval(secs => delay_seconds), v_msg, v_headers)
        RETURNING msg_id INTO v_id;
        RETURN v_id;
    END IF;
    SELECT pgmq.send(q.pgmq_name, v_msg, v_headers, delay_seconds) INTO v_id;
    RETURN v_id;
END $$;

-- Earliest visibility of the given queues' messages in seconds from now (NULL: empty).
CREATE FUNCTION swf._queue_next_visible(p_queues text[]) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    v_next double precision;
    v_min double precision;
BEGIN
    FOR q IN SELECT * FROM swf.queues s WHERE s.name = ANY (p_queues) LOOP
        IF swf._queue_is_transient(q) THEN
            SELECT extract(epoch FROM min(t.vt) - clock_timestamp()) INTO v_next
              FROM swf.transient_messages t WHERE t.queue = q.name;
        ELSE
            EXECUTE format('SELECT extract(epoch FROM min(vt) - clock_timestamp()) FROM pgmq.%I',
                           'q_' || q.pgmq_name) INTO v_next;
        END IF;
        IF v_next IS NOT NULL THEN
            v_min := greatest(0, least(coalesce(v_min, v_next), v_next));
        END IF;
    END LOOP;
    RETURN v_min;
END $$;

CREATE OR REPLACE FUNCTION swf.queue_arm(p_queues text[]) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    v_busy boolean := false;
BEGIN
    FOR q IN SELECT * FROM swf.queues s WHERE s.name = ANY (p_queues) ORDER BY s.id LOOP
        IF pg_try_advisory_xact_lock(swf._queue_lock_space(), q.id) THEN
            INSERT INTO swf.queue_waiters AS w (queue_id, waiting) VALUES (q.id, true)
            ON CONFLICT (queue_id) DO UPDATE SET waiting = true WHERE NOT w.waiting;
        ELSE
            v_busy := true;
        END IF;
    END LOOP;
    UPDATE swf.queues s SET last_active = clock_timestamp()
     WHERE s.name = ANY (p_queues) AND s.expires_ms IS NOT NULL
       AND s.last_active < clock_timestamp() - interval '1 second';
    IF v_busy THEN
        RETURN 0;
    END IF;
    RETURN swf._queue_next_visible(p_queues);
END $$;

CREATE OR REPLACE FUNCTION swf._queue_bury(q swf.queues, p_ids bigint[], p_reason text)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    IF swf._queue_is_transient(q) THEN
        WITH gone AS (
            DELETE FROM swf.transient_messages t WHERE t.queue = q.name AND t.msg_id = ANY (p_ids)
            RETURNING t.*),
        ins AS (
            INSERT INTO swf.transient_archive (msg_id, queue, read_ct, enqueued_at, vt, message,
                                               headers)
            SELECT g.msg_id, g.queue, g.read_ct, g.enqueued_at, g.vt, g.message,
                   CASE WHEN p_reason IS NULL THEN g.headers
                        ELSE g.headers || jsonb_build_object('dead_letter', p_reason) END
              FROM gone g
            ON CONFLICT (msg_id) DO NOTHING
            RETURNING 1)
        SELECT count(*) INTO n FROM ins;
        RETURN n;
    END IF;
    EXECUTE format(
        'WITH gone AS (DELETE FROM pgmq.%I WHERE msg_id = ANY ($1) '
        '  RETURNING msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers), '
        'ins AS (INSERT INTO pgmq.%I (msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers) '
        '  SELECT msg_id, vt, read_ct, enqueued_at, last_read_at, message, '
        '         coalesce(headers, ''{}'') || jsonb_build_object(''dead_letter'', $2::text) '
        '  FROM gone RETURNING 1) '
        'SELECT count(*) FROM ins',
        'q_' || q.pgmq_name, 'a_' || q.pgmq_name) USING p_ids, p_reason INTO n;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION swf.queue_ack(p_queue text, p_ids bigint[], p_archive boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    n integer;
BEGIN
    IF q.id IS NULL THEN
        RETURN 0;
    END IF;
    IF swf._queue_is_transient(q) THEN
        IF p_archive THEN
            RETURN swf._queue_bury(q, p_ids, NULL);
        END IF;
        DELETE FROM swf.transient_messages t WHERE t.queue = q.name AND t.msg_id = ANY (p_ids);
        GET DIAGNOSTICS n = ROW_COUNT;
        RETURN n;
    END IF;
    IF p_archive THEN
        SELECT count(*) INTO n FROM pgmq.archive(q.pgmq_name, p_ids);
    ELSE
        SELECT count(*) INTO n FROM pgmq.delete(q.pgmq_name, p_ids);
    END IF;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION swf.queue_reject(p_queue text, p_ids bigint[], p_requeue boolean,
                                            p_reason text DEFAULT 'rejected')
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    n integer;
BEGIN
    IF q.id IS NULL THEN
        RETURN 0;
    END IF;
    IF NOT p_requeue THEN
        RETURN swf._queue_bury(q, p_ids, coalesce(p_reason, 'rejected'));
    END IF;
    IF swf._queue_is_transient(q) THEN
        UPDATE swf.transient_messages t SET vt = clock_timestamp()
         WHERE t.queue = q.name AND t.msg_id = ANY (p_ids);
        GET DIAGNOSTICS n = ROW_COUNT;
        RETURN n;
    END IF;
    RETURN (SELECT count(*) FROM pgmq.set_vt(q.pgmq_name, p_ids, 0));
END $$;

CREATE OR REPLACE FUNCTION swf.queue_extend(p_queues text[], p_ids bigint[], p_vt double precision)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    n integer := 0;
    m integer;
    v_ids bigint[];
BEGIN
    FOR q IN SELECT * FROM swf.queues WHERE name = ANY (p_queues) LOOP
        v_ids := ARRAY(SELECT p_ids[i] FROM generate_subscripts(p_queues, 1) i
                        WHERE p_queues[i] = q.name);
        IF swf._queue_is_transient(q) THEN
            UPDATE swf.transient_messages t
               SET vt = clock_timestamp() + make_interval(secs => p_vt)
             WHERE t.queue = q.name AND t.msg_id = ANY (v_ids);
        ELSE
            EXECUTE format('UPDATE pgmq.%I SET vt = clock_timestamp() + make_interval(secs => $1) '
                           'WHERE msg_id = ANY ($2)', 'q_' || q.pgmq_name)
              USING p_vt, v_ids;
        END IF;
        GET DIAGNOSTICS m = ROW_COUNT;
        n := n + m;
    END LOOP;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION swf.queue_size(p_queue text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    n bigint;
BEGIN
    IF q.id IS NULL THEN
        RETURN 0;
    END IF;
    IF swf._queue_is_transient(q) THEN
        SELECT count(*) INTO n FROM swf.transient_messages t
         WHERE t.queue = q.name AND (t.read_ct = 0 OR t.vt <= clock_timestamp());
        RETURN n;
    END IF;
    EXECUTE format('SELECT count(*) FROM pgmq.%I WHERE read_ct = 0 OR vt <= clock_timestamp()',
                   'q_' || q.pgmq_name) INTO n;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION swf.queue_purge(p_queue text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    n bigint;
BEGIN
    IF q.id IS NULL THEN
        RETURN 0;
    END IF;
    IF swf._queue_is_transient(q) THEN
        DELETE FROM swf.transient_messages t
         WHERE t.queue = q.name AND (t.read_ct = 0 OR t.vt <= clock_timestamp());
        GET DIAGNOSTICS n = ROW_COUNT;
        RETURN n;
    END IF;
    EXECUTE format('WITH gone AS (DELETE FROM pgmq.%I WHERE read_ct = 0 OR vt <= clock_timestamp() '
                   'RETURNING 1) SELECT count(*) FROM gone', 'q_' || q.pgmq_name) INTO n;
    RETURN n;
END $$;

-- Drop a queue: its mapping and bindings, its messages; a durable queue's pgmq tables under a
-- short lock_timeout (lock_not_available reaches the caller, who retries: nothing changed).
CREATE OR REPLACE FUNCTION swf.queue_drop(p_queue text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    v_old_timeout text;
BEGIN
    IF q.id IS NULL THEN
        RETURN false;
    END IF;
    v_old_timeout := current_setting('lock_timeout');
    PERFORM set_config('lock_timeout', swf._ddl_lock_timeout(), true);
    DELETE FROM swf.queues WHERE id = q.id;  -- cascades: bindings, waiters, transient messages
    IF NOT swf._queue_is_transient(q) THEN
        PERFORM pgmq.drop_queue(q.pgmq_name);
    END IF;
    PERFORM set_config('lock_timeout', v_old_timeout, true);
    RETURN true;
END $$;

-- Remove expired queues (x-expires / auto_delete, unused that long). Transient queues go
-- with a DELETE; a legacy expiring pgmq queue whose DROP cannot get its lock at once (a
-- pg_dump, a long transaction) is left for the next pass, and the pass stops there.
CREATE OR REPLACE FUNCTION swf.queue_reap() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    n integer := 0;
BEGIN
    FOR q IN
        SELECT * FROM swf.queues
         WHERE expires_ms IS NOT NULL
           AND last_active < clock_timestamp() - make_interval(secs => expires_ms / 1000.0)
         ORDER BY id
         FOR UPDATE SKIP LOCKED
    LOOP
        BEGIN
            PERFORM swf.queue_drop(q.name);
            n := n + 1;
        EXCEPTION WHEN lock_not_available THEN
            RAISE NOTICE 'swf.queue_reap: queue % is locked; retried on the next pass', q.name;
            EXIT;
        END;
    END LOOP;
    RETURN n;
END $$;

-- Delete queued (not held) messages of the given Celery task ids from every queue: an index
-- probe per queue table.
CREATE OR REPLACE FUNCTION swf.queue_remove_tasks(task_ids text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    n integer := 0;
    m integer;
BEGIN
    IF cardinality(task_ids) IS NULL OR cardinality(task_ids) = 0 THEN
        RETURN 0;
    END IF;
    DELETE FROM swf.transient_messages t WHERE (t.headers ->> 'task_id') = ANY (task_ids)
       AND (t.read_ct = 0 OR t.vt <= clock_timestamp());
    GET DIAGNOSTICS n = ROW_COUNT;
    FOR q IN SELECT * FROM swf.queues s WHERE left(s.pgmq_name, 2) = 'k_' ORDER BY id LOOP
        EXECUTE format('DELETE FROM pgmq.%I WHERE (headers ->> ''task_id'') = ANY ($1) '
                       'AND (read_ct = 0 OR vt <= clock_timestamp())', 'q_' || q.pgmq_name)
          USING task_ids;
        GET DIAGNOSTICS m = ROW_COUNT;
        n := n + m;
    END LOOP;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION swf.queue_remove_root(root_id text) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT c.removed FROM swf.cancel_canvas(queue_remove_root.root_id) c);
END $$;

-- Cancel a canvas by root id: per queue table ONE statement locks the canvas' messages,
-- deletes the queued ones and reports the task ids of those a consumer holds. A consumer
-- reads with SKIP LOCKED, so no message moves from queued to held in between.
CREATE OR REPLACE FUNCTION swf.cancel_canvas(p_root text) RETURNS TABLE (removed integer, held text[])
LANGUAGE plpgsql AS $$
DECLARE
    q      swf.queues;
    v_n    integer;
    v_ids  text[];
BEGIN
    removed := 0;
    held := '{}';
    IF p_root IS NULL THEN
        RETURN NEXT;
        RETURN;
    END IF;
    WITH m AS (
        SELECT t.msg_id, t.headers ->> 'task_id' AS task_id,
               (t.read_ct = 0 OR t.vt <= clock_timestamp()) AS queued
          FROM swf.transient_messages t WHERE (t.headers ->> 'root_id') = p_root
           FOR UPDATE),
    gone AS (
        DELETE FROM swf.transient_messages t USING m
         WHERE t.msg_id = m.msg_id AND m.queued RETURNING 1)
    SELECT (SELECT count(*) FROM gone), array_agg(m.task_id) FILTER (WHERE NOT m.queued)
      INTO v_n, v_ids FROM m;
    removed := removed + coalesce(v_n, 0);
    held := held || coalesce(v_ids, '{}');
    FOR q IN SELECT * FROM swf.queues s WHERE left(s.pgmq_name, 2) = 'k_' ORDER BY id LOOP
        EXECUTE format(
            'WITH m AS (SELECT msg_id, headers ->> ''task_id'' AS task_id, '
            '                  (read_ct = 0 OR vt <= clock_timestamp()) AS queued '
            '             FROM pgmq.%1$I WHERE (headers ->> ''root_id'') = $1 FOR UPDATE), '
            'gone AS (DELETE FROM pgmq.%1$I t USING m WHERE t.msg_id = m.msg_id AND m.queued '
            '         RETURNING 1) '
            'SELECT (SELECT count(*) FROM gone), array_agg(m.task_id) FILTER (WHERE NOT m.queued) '
            '  FROM m', 'q_' || q.pgmq_name)
           INTO v_n, v_ids USING p_root;
        removed := removed + coalesce(v_n, 0);
        held := held || coalesce(v_ids, '{}');
    END LOOP;
    RETURN NEXT;
END $$;

CREATE OR REPLACE FUNCTION swf.queue_dead_letters(p_queue text, p_limit integer DEFAULT 100)
RETURNS TABLE (msg_id bigint, read_ct integer, archived_at timestamptz, reason text,
               message jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
BEGIN
    IF q.id IS NULL THEN
        RETURN QUERY SELECT a.msg_id, a.read_ct, a.archived_at, a.headers ->> 'dead_letter',
                            a.message
                       FROM swf.transient_archive a
                      WHERE a.queue = p_queue AND a.headers ? 'dead_letter'
                      ORDER BY a.msg_id DESC LIMIT p_limit;
        RETURN;
    END IF;
    IF swf._queue_is_transient(q) THEN
        RETURN QUERY SELECT a.msg_id, a.read_ct, a.archived_at, a.headers ->> 'dead_letter',
                            a.message
                       FROM swf.transient_archive a
                      WHERE a.queue = p_queue AND a.headers ? 'dead_letter'
                      ORDER BY a.msg_id DESC LIMIT p_limit;
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT msg_id, read_ct, archived_at, headers->>''dead_letter'', message FROM pgmq.%I '
        'WHERE headers ? ''dead_letter'' ORDER BY msg_id DESC LIMIT $1', 'a_' || q.pgmq_name)
      USING p_limit;
END $$;

-- Existing durable queues get the task id / root id indexes too.
DO $$
DECLARE
    q swf.queues;
BEGIN
    FOR q IN SELECT * FROM swf.queues WHERE left(pgmq_name, 2) = 'k_' LOOP
        IF to_regclass(format('pgmq.%I', 'q_' || q.pgmq_name)) IS NOT NULL THEN
            PERFORM swf._queue_indexes(q.pgmq_name);
        END IF;
    END LOOP;
END $$;

-- -- retention -----------------------------------------------------------------------------
-- Each function deletes at most p_limit rows (one short transaction per call; the caller
-- loops) and returns how many, or -1 when another session is cleaning up right now (a
-- transaction-level advisory try-lock: one cleaner at a time, nobody waits). p_dry: count
-- what would go, delete nothing.

CREATE FUNCTION swf._retention_lock() RETURNS boolean
LANGUAGE sql AS $$ SELECT pg_try_advisory_xact_lock(hashtext('swf-celery:retention')) $$;

CREATE INDEX runs_finished_retention ON swf.runs ((coalesce(finished_at, updated_at)))
    WHERE status IN ('completed', 'failed', 'cancelled');

-- Finished runs (completed, failed, cancelled) finished before p_before, with their step
-- states and step tasks (ON DELETE CASCADE).
CREATE FUNCTION swf.retention_runs(p_before timestamptz, p_limit integer, p_dry boolean)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
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

-- Archived rows of pgmq archive tables older than p_before. p_kind: 'dead_letters' (rows
-- with a dead_letter reason, broker queues), 'acked' (archive_acked copies, broker queues),
-- 'channels' (messaging channels' acknowledged messages).
CREATE FUNCTION swf.retention_archives(p_kind text, p_before timestamptz, p_limit integer,
                                       p_dry boolean)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_table text;
    v_filter text;
    n bigint := 0;
    m bigint;
BEGIN
    IF p_kind NOT IN ('dead_letters', 'acked', 'channels') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('unknown archive kind %L', p_kind);
    END IF;
    IF NOT p_dry AND NOT swf._retention_lock() THEN
        RETURN -1;
    END IF;
    v_filter := CASE p_kind WHEN 'dead_letters' THEN 'headers ? ''dead_letter'''
                            WHEN 'acked' THEN 'NOT (coalesce(headers, ''{}'') ? ''dead_letter'')'
                            ELSE 'true' END;
    IF p_kind <> 'channels' THEN
        IF p_dry THEN
            EXECUTE format('SELECT count(*) FROM swf.transient_archive '
                           'WHERE archived_at < $1 AND %s', v_filter) INTO m USING p_before;
        ELSE
            EXECUTE format('DELETE FROM swf.transient_archive WHERE msg_id IN ('
                           'SELECT msg_id FROM swf.transient_archive WHERE archived_at < $1 '
                           'AND %s LIMIT $2)', v_filter) USING p_before, p_limit;
            GET DIAGNOSTICS m = ROW_COUNT;
        END IF;
        n := n + m;
    END IF;
    FOR v_table IN
        SELECT 'a_' || s.pgmq_name FROM swf.queues s
         WHERE p_kind <> 'channels' AND left(s.pgmq_name, 2) = 'k_'
        UNION ALL
        SELECT 'a_' || c.queue_name FROM swf.channels c WHERE p_kind = 'channels'
    LOOP
        EXIT WHEN NOT p_dry AND n >= p_limit;
        CONTINUE WHEN to_regclass(format('pgmq.%I', v_table)) IS NULL;
        IF p_dry THEN
            EXECUTE format('SELECT count(*) FROM pgmq.%I WHERE archived_at < $1 AND %s',
                           v_table, v_filter) INTO m USING p_before;
        ELSE
            EXECUTE format('DELETE FROM pgmq.%1$I WHERE msg_id IN (SELECT msg_id FROM pgmq.%1$I '
                           'WHERE archived_at < $1 AND %2$s LIMIT $2)', v_table, v_filter)
              USING p_before, p_limit - n;
            GET DIAGNOSTICS m = ROW_COUNT;
        END IF;
        n := n + m;
    END LOOP;
    RETURN n;
END $$;

-- Celery results past their expiry: task results, group results and chords whose
-- expires_at passed, and (p_before) those stored without an expiry before p_before.
CREATE FUNCTION swf.retention_results(p_before timestamptz, p_limit integer, p_dry boolean)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint := 0;
    m bigint;
BEGIN
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

-- CREATE OR REPLACE resets a function's attributes: the three queue functions that run
-- DDL keep running as their owner with a fixed search_path (see 0011_least_privilege.sql;
-- their ACLs, EXECUTE revoked from PUBLIC, survive the replace).
ALTER FUNCTION swf.queue_ensure(text, bigint)
    SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp;
ALTER FUNCTION swf.queue_drop(text)
    SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp;
ALTER FUNCTION swf.queue_reap()
    SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp;
