-- 0002: the broker (kombu transport ``swf://``) over pgmq.
--
-- Every kombu queue name ("celery", "celery@host.celery.pidbox", "GPU.high", ...) maps to a
-- safe pgmq queue name kept in swf.queues; SQL callers always pass the kombu name as a
-- parameter and the functions below look the pgmq name up in that table, so no caller's
-- text is ever spliced into SQL. Bindings (exchange -> queue) live in swf.queue_bindings so
-- that fanout and topic routing work across processes.
--
-- Wake-ups: each queue table has a deferred constraint trigger that NOTIFYs channel
-- 'swfq_<pgmq name>' only when a consumer has marked the queue as waited on
-- (swf.queue_waiters.waiting), and clears the mark. Busy consumers never mark, so producers
-- under load never NOTIFY (a NOTIFY takes a global lock at commit). Producers hold a shared
-- advisory lock on the queue from the trigger to commit; a consumer arms the mark under the
-- exclusive lock (try-lock: it never waits) and then reads again, so a message is either seen
-- by that read or its producer sees the mark and wakes the consumer: no lost wake-up.

CREATE TABLE swf.queues (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,          -- the kombu queue name, verbatim
    pgmq_name   text NOT NULL UNIQUE,          -- sanitised prefix + hash, <= 47 chars
    expires_ms  bigint,                        -- x-expires: dropped when unused this long
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_active timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE swf.queues IS 'kombu queue name -> pgmq queue name (swf:// broker)';

CREATE UNLOGGED TABLE swf.queue_waiters (
    queue_id integer PRIMARY KEY REFERENCES swf.queues (id) ON DELETE CASCADE,
    waiting  boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE swf.queue_waiters IS 'queues an idle consumer waits on (wake-up coalescing)';

CREATE TABLE swf.queue_bindings (
    exchange    text NOT NULL,
    routing_key text NOT NULL,
    pattern     text,
    queue       text NOT NULL REFERENCES swf.queues (name) ON DELETE CASCADE,
    PRIMARY KEY (exchange, queue, routing_key)
);
CREATE INDEX queue_bindings_queue_idx ON swf.queue_bindings (queue);
COMMENT ON TABLE swf.queue_bindings IS 'exchange bindings of the swf:// broker (all processes)';

-- Advisory lock namespace of the wake-up protocol (first key of the two-key form).
CREATE FUNCTION swf._queue_lock_space() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1937204849 $$;  -- 'swfq'

-- Refuse names that cannot be stored faithfully; the message names the rule.
CREATE FUNCTION swf.queue_check_name(p_name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_name IS NULL OR p_name = '' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid queue name: the name is empty';
    END IF;
    IF p_name ~ E'[\\x01-\\x1f\\x7f]' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('invalid queue name %s: control characters are not allowed',
                             left(quote_literal(p_name), 80));
    END IF;
    IF octet_length(p_name) > 255 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('invalid queue name %s...: %s bytes, the limit is 255 bytes in UTF-8',
                             left(quote_literal(p_name), 40), octet_length(p_name));
    END IF;
END $$;

-- The pgmq name of a kombu queue name: readable prefix + 12 hex digits of its SHA-256.
CREATE FUNCTION swf.queue_pgmq_name(p_name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT 'k_'
        || left(trim(both '_' from regexp_replace(lower(p_name), '[^a-z0-9]+', '_', 'g')), 24)
        || '_' || left(encode(sha256(convert_to(p_name, 'UTF8')), 'hex'), 12)
$$;

-- The wake-up trigger body (see the header). TG_ARGV[0] is swf.queues.id.
CREATE FUNCTION swf._queue_wakeup() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_id integer := TG_ARGV[0]::integer;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(swf._queue_lock_space(), v_id);
    UPDATE swf.queue_waiters SET waiting = false WHERE queue_id = v_id AND waiting;
    IF FOUND THEN
        PERFORM pg_notify('swfq_' || substr(TG_TABLE_NAME, 3), '');
    END IF;
    RETURN NULL;
END $$;

-- Map a kombu queue name, creating the mapping, the pgmq queue, its priority index and its
-- wake-up trigger when missing. Safe in any transaction and under concurrency.
CREATE FUNCTION swf.queue_ensure(p_name text, p_expires_ms bigint DEFAULT NULL)
RETURNS swf.queues
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    v_pgmq text;
    v_other text;
BEGIN
    SELECT * INTO q FROM swf.queues WHERE name = p_name;
    IF FOUND THEN
        RETURN q;
    END IF;
    PERFORM swf.queue_check_name(p_name);
    v_pgmq := swf.queue_pgmq_name(p_name);
    SELECT name INTO v_other FROM swf.queues WHERE pgmq_name = v_pgmq;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '23505',
            MESSAGE = format('queue names %L and %L map to the same pgmq queue %s',
                             p_name, v_other, v_pgmq);
    END IF;
    INSERT INTO swf.queues (name, pgmq_name, expires_ms)
    VALUES (p_name, v_pgmq, p_expires_ms)
    ON CONFLICT (name) DO NOTHING
    RETURNING * INTO q;
    IF NOT FOUND THEN  -- created concurrently (we waited for that transaction to commit)
        SELECT * INTO q FROM swf.queues WHERE name = p_name;
        RETURN q;
    END IF;
    PERFORM pgmq.create(q.pgmq_name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgmq.%I '
                   '((coalesce((headers->>''priority'')::integer, 0)), msg_id)',
                   'q_' || q.pgmq_name || '_pri_idx', 'q_' || q.pgmq_name);
    EXECUTE format('CREATE CONSTRAINT TRIGGER swf_wakeup AFTER INSERT ON pgmq.%I '
                   'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW '
                   'EXECUTE FUNCTION swf._queue_wakeup(%s)', 'q_' || q.pgmq_name, q.id);
    INSERT INTO swf.queue_waiters (queue_id) VALUES (q.id) ON CONFLICT DO NOTHING;
    RETURN q;
END $$;

-- The pgmq headers of a kombu message: what the broker sorts and filters on.
CREATE FUNCTION swf.queue_headers(message jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'priority', CASE WHEN jsonb_typeof(message #> '{properties,priority}') = 'number'
                         THEN greatest(0, least(9, floor((message #>> '{properties,priority}')::numeric)))::integer
                         ELSE 0 END,
        'task_id', message #>> '{headers,id}',
        'root_id', message #>> '{headers,root_id}'))
$$;

-- Enqueue a kombu message (the dict kombu's virtual Channel._put receives) on a queue named
-- as Celery names it. Priority 0..9 (0 first, as on Redis), delay in whole seconds.
CREATE FUNCTION swf.queue_send(queue text, message jsonb, delay_seconds integer DEFAULT 0)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    v_msg jsonb := queue_send.message;
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
    SELECT pgmq.send(q.pgmq_name, v_msg, swf.queue_headers(v_msg), delay_seconds)
      INTO v_id;
    RETURN v_id;
END $$;

-- Send one message to every queue bound to a fanout exchange; returns the number of copies.
CREATE FUNCTION swf.queue_fanout(p_exchange text, p_message jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_queue text;
    n integer := 0;
BEGIN
    FOR v_queue IN
        SELECT DISTINCT b.queue FROM swf.queue_bindings b JOIN swf.queues q ON q.name = b.queue
         WHERE b.exchange = p_exchange
           AND (q.expires_ms IS NULL
                OR q.last_active > clock_timestamp() - make_interval(secs => q.expires_ms / 1000.0))
    LOOP
        PERFORM swf.queue_send(v_queue, p_message, 0);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Read up to p_qty messages from the queues in order (the caller rotates them for fairness).
-- p_no_ack[i]: pop (delete on read) instead of hiding for p_vt seconds. A message read more
-- than p_max_deliveries times (0: no limit) is dead-lettered instead of returned. When nothing
-- is found and p_arm, the queues are marked as waited on and read once more (see header).
-- Message rows have msg_id set; when none is returned, one row with msg_id NULL carries
-- next_visible: seconds until the earliest hidden message becomes visible (NULL: none, 0: poll
-- again at once).
CREATE FUNCTION swf.queue_read(
    p_queues text[], p_no_ack boolean[], p_qty integer, p_vt double precision,
    p_max_deliveries integer, p_arm boolean)
RETURNS TABLE (queue text, msg_id bigint, read_ct integer, message jsonb,
               next_visible double precision)
LANGUAGE plpgsql AS $$
DECLARE
    v_got integer := 0;
    v_pass integer;
    i integer;
    q swf.queues;
    v_tbl text;
    rec record;
    v_dead bigint[];
    v_next double precision;
    v_min double precision;
    v_busy boolean := false;
BEGIN
    FOR v_pass IN 1..2 LOOP
        FOR i IN 1 .. coalesce(array_length(p_queues, 1), 0) LOOP
            EXIT WHEN v_got >= p_qty;
            SELECT * INTO q FROM swf.queues s WHERE s.name = p_queues[i];
            CONTINUE WHEN NOT FOUND;  -- deleted meanwhile
            v_tbl := 'q_' || q.pgmq_name;
            v_dead := '{}';
            IF p_no_ack[i] THEN
                FOR rec IN EXECUTE format(
                    'WITH picked AS (SELECT m.msg_id FROM pgmq.%1$I m WHERE m.vt <= clock_timestamp() '
                    '  ORDER BY (coalesce((m.headers->>''priority'')::integer, 0)), m.msg_id '
                    '  LIMIT $1 FOR UPDATE SKIP LOCKED), '
                    'gone AS (DELETE FROM pgmq.%1$I m USING picked WHERE m.msg_id = picked.msg_id '
                    '  RETURNING m.msg_id, m.read_ct + 1 AS read_ct, m.message, m.headers) '
                    'SELECT * FROM gone ORDER BY (coalesce((headers->>''priority'')::integer, 0)), msg_id',
                    v_tbl) USING p_qty - v_got
                LOOP
                    queue := p_queues[i]; msg_id := rec.msg_id; read_ct := rec.read_ct;
                    message := rec.message; next_visible := NULL;
                    v_got := v_got + 1;
                    RETURN NEXT;
                END LOOP;
            ELSE
                FOR rec IN EXECUTE format(
                    'WITH picked AS (SELECT m.msg_id FROM pgmq.%1$I m WHERE m.vt <= clock_timestamp() '
                    '  ORDER BY (coalesce((m.headers->>''priority'')::integer, 0)), m.msg_id '
                    '  LIMIT $1 FOR UPDATE SKIP LOCKED), '
                    'upd AS (UPDATE pgmq.%1$I m SET vt = clock_timestamp() + make_interval(secs => $2), '
                    '  read_ct = m.read_ct + 1, last_read_at = clock_timestamp() '
                    '  FROM picked WHERE m.msg_id = picked.msg_id '
                    '  RETURNING m.msg_id, m.read_ct, m.message, m.headers) '
                    'SELECT * FROM upd ORDER BY (coalesce((headers->>''priority'')::integer, 0)), msg_id',
                    v_tbl) USING p_qty - v_got, p_vt
                LOOP
                    IF p_max_deliveries > 0 AND rec.read_ct > p_max_deliveries THEN
                        v_dead := v_dead || rec.msg_id;
                        CONTINUE;
                    END IF;
                    queue := p_queues[i]; msg_id := rec.msg_id; read_ct := rec.read_ct;
                    message := rec.message; next_visible := NULL;
                    v_got := v_got + 1;
                    RETURN NEXT;
                END LOOP;
                IF cardinality(v_dead) > 0 THEN
                    PERFORM swf._queue_bury(q, v_dead,
                        format('delivered more than %s times', p_max_deliveries));
                END IF;
            END IF;
        END LOOP;
        EXIT WHEN v_got > 0 OR NOT p_arm OR v_pass = 2;
        -- Nothing found: arm the wake-up of every queue whose lock is free; a held lock
        -- means a producer is committing right now, so the caller should read again.
        FOR q IN SELECT * FROM swf.queues s WHERE s.name = ANY (p_queues) LOOP
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
    END LOOP;
    IF v_got = 0 THEN
        v_min := NULL;
        IF v_busy THEN
            v_min := 0;
        ELSE
            FOR q IN SELECT * FROM swf.queues s WHERE s.name = ANY (p_queues) LOOP
                EXECUTE format('SELECT extract(epoch FROM min(vt) - clock_timestamp()) FROM pgmq.%I',
                               'q_' || q.pgmq_name) INTO v_next;
                IF v_next IS NOT NULL THEN
                    v_min := greatest(0, least(coalesce(v_min, v_next), v_next));
                END IF;
            END LOOP;
        END IF;
        queue := NULL; msg_id := NULL; read_ct := NULL; message := NULL; next_visible := v_min;
        RETURN NEXT;
    END IF;
END $$;

-- Arm the wake-up of the given queues (see the header); the caller then reads once more
-- before it sleeps. Returns seconds until the earliest hidden message is due (NULL: none),
-- or 0 when a producer is committing right now (read again instead of sleeping).
CREATE FUNCTION swf.queue_arm(p_queues text[]) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    v_busy boolean := false;
    v_next double precision;
    v_min double precision;
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
    FOR q IN SELECT * FROM swf.queues s WHERE s.name = ANY (p_queues) LOOP
        EXECUTE format('SELECT extract(epoch FROM min(vt) - clock_timestamp()) FROM pgmq.%I',
                       'q_' || q.pgmq_name) INTO v_next;
        IF v_next IS NOT NULL THEN
            v_min := greatest(0, least(coalesce(v_min, v_next), v_next));
        END IF;
    END LOOP;
    RETURN v_min;
END $$;

-- Move messages to the queue's archive (its dead-letter store), recording why.
CREATE FUNCTION swf._queue_bury(q swf.queues, p_ids bigint[], p_reason text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
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

CREATE FUNCTION swf._queue_get(p_name text) RETURNS swf.queues
LANGUAGE sql STABLE AS $$ SELECT * FROM swf.queues WHERE name = p_name $$;

-- Acknowledge: delete (or archive, p_archive) delivered messages.
CREATE FUNCTION swf.queue_ack(p_queue text, p_ids bigint[], p_archive boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    n integer;
BEGIN
    IF q.id IS NULL THEN
        RETURN 0;
    END IF;
    IF p_archive THEN
        SELECT count(*) INTO n FROM pgmq.archive(q.pgmq_name, p_ids);
    ELSE
        SELECT count(*) INTO n FROM pgmq.delete(q.pgmq_name, p_ids);
    END IF;
    RETURN n;
END $$;

-- Reject: visible again at once (p_requeue) or dead-lettered with p_reason.
CREATE FUNCTION swf.queue_reject(p_queue text, p_ids bigint[], p_requeue boolean,
                                 p_reason text DEFAULT 'rejected')
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
BEGIN
    IF q.id IS NULL THEN
        RETURN 0;
    END IF;
    IF p_requeue THEN
        RETURN (SELECT count(*) FROM pgmq.set_vt(q.pgmq_name, p_ids, 0));
    END IF;
    RETURN swf._queue_bury(q, p_ids, p_reason);
END $$;

-- Extend the visibility of held messages: p_queues[i] holds p_ids[i].
CREATE FUNCTION swf.queue_extend(p_queues text[], p_ids bigint[], p_vt double precision)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    n integer := 0;
    m integer;
BEGIN
    FOR q IN SELECT * FROM swf.queues WHERE name = ANY (p_queues) LOOP
        EXECUTE format('UPDATE pgmq.%I SET vt = clock_timestamp() + make_interval(secs => $1) '
                       'WHERE msg_id = ANY ($2)', 'q_' || q.pgmq_name)
          USING p_vt, ARRAY(SELECT p_ids[i] FROM generate_subscripts(p_queues, 1) i
                             WHERE p_queues[i] = q.name);
        GET DIAGNOSTICS m = ROW_COUNT;
        n := n + m;
    END LOOP;
    RETURN n;
END $$;

-- Messages waiting in a queue: visible or delayed, not those held by a consumer.
CREATE FUNCTION swf.queue_size(p_queue text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    n bigint;
BEGIN
    IF q.id IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format('SELECT count(*) FROM pgmq.%I WHERE read_ct = 0 OR vt <= clock_timestamp()',
                   'q_' || q.pgmq_name) INTO n;
    RETURN n;
END $$;

-- Delete the waiting messages of a queue (those held by consumers stay); returns the count.
CREATE FUNCTION swf.queue_purge(p_queue text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    n bigint;
BEGIN
    IF q.id IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format('WITH gone AS (DELETE FROM pgmq.%I WHERE read_ct = 0 OR vt <= clock_timestamp() '
                   'RETURNING 1) SELECT count(*) FROM gone', 'q_' || q.pgmq_name) INTO n;
    RETURN n;
END $$;

-- Drop a queue: its pgmq tables, mapping and bindings.
CREATE FUNCTION swf.queue_drop(p_queue text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
BEGIN
    IF q.id IS NULL THEN
        RETURN false;
    END IF;
    DELETE FROM swf.queues WHERE id = q.id;
    PERFORM pgmq.drop_queue(q.pgmq_name);
    RETURN true;
END $$;

-- Drop queues declared with x-expires that nobody consumed for that long.
CREATE FUNCTION swf.queue_reap() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_name text;
    n integer := 0;
BEGIN
    FOR v_name IN
        SELECT name FROM swf.queues
         WHERE expires_ms IS NOT NULL
           AND last_active < clock_timestamp() - make_interval(secs => expires_ms / 1000.0)
         FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM swf.queue_drop(v_name);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

CREATE FUNCTION swf.queue_bind(p_exchange text, p_routing_key text, p_pattern text,
                               p_queue text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM swf.queue_ensure(p_queue);
    INSERT INTO swf.queue_bindings (exchange, routing_key, pattern, queue)
    VALUES (p_exchange, coalesce(p_routing_key, ''), p_pattern, p_queue)
    ON CONFLICT DO NOTHING;
END $$;

CREATE FUNCTION swf.queue_unbind(p_exchange text, p_routing_key text, p_queue text)
RETURNS void
LANGUAGE sql AS $$
    DELETE FROM swf.queue_bindings
     WHERE exchange = p_exchange AND routing_key = coalesce(p_routing_key, '') AND queue = p_queue
$$;

-- Delete queued (not yet delivered, delayed, or due for redelivery) messages of the given
-- Celery task ids from every mapped queue; messages a consumer holds are left alone.
CREATE FUNCTION swf.queue_remove_tasks(task_ids text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    n integer := 0;
    m integer;
BEGIN
    IF cardinality(task_ids) IS NULL OR cardinality(task_ids) = 0 THEN
        RETURN 0;
    END IF;
    FOR q IN SELECT * FROM swf.queues ORDER BY id LOOP
        EXECUTE format('DELETE FROM pgmq.%I WHERE headers->>''task_id'' = ANY ($1) '
                       'AND (read_ct = 0 OR vt <= clock_timestamp())', 'q_' || q.pgmq_name)
          USING task_ids;
        GET DIAGNOSTICS m = ROW_COUNT;
        n := n + m;
    END LOOP;
    RETURN n;
END $$;

-- The same for every message of a canvas: headers.root_id = root_id.
CREATE FUNCTION swf.queue_remove_root(root_id text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    n integer := 0;
    m integer;
BEGIN
    IF root_id IS NULL THEN
        RETURN 0;
    END IF;
    FOR q IN SELECT * FROM swf.queues ORDER BY id LOOP
        EXECUTE format('DELETE FROM pgmq.%I WHERE headers->>''root_id'' = $1 '
                       'AND (read_ct = 0 OR vt <= clock_timestamp())', 'q_' || q.pgmq_name)
          USING queue_remove_root.root_id;
        GET DIAGNOSTICS m = ROW_COUNT;
        n := n + m;
    END LOOP;
    RETURN n;
END $$;

-- Dead-lettered messages of a queue (newest first), with the reason.
CREATE FUNCTION swf.queue_dead_letters(p_queue text, p_limit integer DEFAULT 100)
RETURNS TABLE (msg_id bigint, read_ct integer, archived_at timestamptz, reason text,
               message jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
BEGIN
    IF q.id IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT msg_id, read_ct, archived_at, headers->>''dead_letter'', message FROM pgmq.%I '
        'WHERE headers ? ''dead_letter'' ORDER BY msg_id DESC LIMIT $1', 'a_' || q.pgmq_name)
      USING p_limit;
END $$;
