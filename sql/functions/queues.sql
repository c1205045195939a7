-- The broker (kombu transport ``swf://``): queues, their messages, wake-ups, bindings,
-- dead letters (tables: sql/migrations/0002_transport.sql, 0012, 0013). These functions name
-- no workflow, result or goal object: the engine attaches to the broker through a trigger on
-- its dead-letter store, swf.dead_letters (sql/functions/workflows.sql).
--
-- Every kombu queue name ("celery", "celery@host.celery.pidbox", "GPU.high", ...) maps to a
-- safe pgmq name kept in swf.queues; SQL callers always pass the kombu name as a parameter
-- and the functions look the rest up in that table, so no caller's text is ever spliced into
-- SQL. A queue's storage is chosen once, when it is created (swf.queues.storage):
-- * 'pgmq': a durable queue, its own pgmq table (pgmq.q_<pgmq name>, archive pgmq.a_<…>);
-- * 'transient': declared with x-expires or auto_delete (Celery's pidbox, reply and event
--   queues): rows of the shared table swf.transient_messages keyed by queue name, so that
--   declaring, expiring or deleting one is DML, never DDL. A publisher never recreates an
--   expired transient queue: its messages are dropped (FK to swf.queues), as on Redis.
-- swf._queue_storage gives the table and the condition of a queue's rows, and each
-- operation is written once over them.
--
-- Wake-ups: each queue table has a deferred constraint trigger that wakes the consumers
-- waiting on the queue, and only those (swf._queue_wake_locked): a consumer asleep on it
-- (swf.queue_sleep, a row of swf.queue_sleepers: Celery workers) is woken one per message,
-- the first in line, on its own channel 'swfw_<16 hex digits>' with the queue's channel as
-- payload, and goes to the back of the line; a consumer that marked the queue (swf.queue_arm,
-- swf.queue_waiters.waiting: the synchronous loop) is woken on channel 'swfq_<pgmq name>',
-- with every other listener of it, and the mark cleared. Busy consumers never mark or sleep,
-- so producers under load never NOTIFY (a NOTIFY takes a global lock at commit). Producers
-- hold a shared advisory lock on the queue from the trigger to commit; a consumer marks or
-- sleeps under the exclusive lock (waiting briefly for producers committing) and then looks
-- for a visible message, so a message is either seen by that look or its producer sees the
-- mark or the sleeper and wakes the consumer: no lost wake-up. A sleeper stays asleep when
-- woken (to the back of the line) until a read fills its batch (swf.queue_wake_up); one
-- whose LISTEN session is gone is skipped (and removed); a consumer woken for a queue it
-- cannot read now passes the wake-up on (swf.queue_pass_wake). The
-- NOTIFY is a hint (swf.notify_hint, notifications.sql): while PostgreSQL's notification
-- queue is too full it is skipped, and the consumer finds the message by its polling fallback
-- (or the gap its listener reports), never by a failed commit.
--
-- DDL (creating or dropping a durable queue's tables) runs under a short lock_timeout: a
-- drop that cannot get its lock is skipped and retried on the next reap pass (or raises
-- lock_not_available for the caller to retry), so it never queues an ACCESS EXCLUSIVE
-- request behind a pg_dump and blocks the hot path. Those functions run as their owner (the
-- role that ran the migrations), so workers and clients need no CREATE on any schema.

-- Advisory lock namespace of the wake-up protocol (first key of the two-key form): 'swfq'.
CREATE OR REPLACE FUNCTION swf._queue_lock_space() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1937204849 $$;

-- Advisory lock namespace of the consumers' LISTEN sessions: 'swfw'. Each holds the session
-- lock (this space, its backend pid) from its connect (transport/wakeup.py, query
-- hold_sleeper in transport/queries.sql).
CREATE OR REPLACE FUNCTION swf._sleeper_lock_space() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1937204855 $$;

-- Whether the session with backend pid p_pid, a consumer's LISTEN session, still runs. One
-- that holds its sleeper lock answers from the lock manager: a shared try of the lock fails
-- while it lives. Otherwise (a consumer of release 23 or older, a session that did not get
-- the lock, a pid that is not a LISTEN session) the server's backend status is read, which
-- copies every backend's status entry: tens of microseconds, more with max_connections.
-- A session may hold any advisory lock it likes: one that takes a dead consumer's lock makes
-- that consumer look alive until swf.queue_reap, which reads the backend status, removes it.
-- Every name is schema-qualified: the function runs under its callers' search_path.
CREATE OR REPLACE FUNCTION swf._sleeper_alive(p_pid integer) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_catalog.pg_try_advisory_lock_shared(swf._sleeper_lock_space(), p_pid) THEN
        RETURN true;
    END IF;
    PERFORM pg_catalog.pg_advisory_unlock_shared(swf._sleeper_lock_space(), p_pid);
    RETURN EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(p_pid));
END $$;
REVOKE EXECUTE ON FUNCTION swf._sleeper_alive(integer) FROM PUBLIC;

-- Refuse names that cannot be stored faithfully; the message names the rule.
CREATE OR REPLACE FUNCTION swf.queue_check_name(p_name text) RETURNS void
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
CREATE OR REPLACE FUNCTION swf.queue_pgmq_name(p_name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT 'k_'
        || left(trim(both '_' from regexp_replace(lower(p_name), '[^a-z0-9]+', '_', 'g')), 24)
        || '_' || left(encode(sha256(convert_to(p_name, 'UTF8')), 'hex'), 12)
$$;

-- Names Celery gives to queues it lets expire: a publisher that finds such a queue missing
-- drops the message instead of creating a permanent queue without bindings.
CREATE OR REPLACE FUNCTION swf.queue_is_transient_name(p_name text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT p_name LIKE '%.pidbox' OR p_name LIKE 'celeryev.%' OR p_name LIKE '%.dq2'
$$;

-- How stale swf.queues.last_active may get before a declaration or a consumer's mark writes
-- it again: a second for an expiring queue (its x-expires counts from it), a minute for a
-- durable one (retention removes a durable queue only after it was unused for hours).
CREATE OR REPLACE FUNCTION swf._queue_mark_every(p_expires_ms bigint) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_expires_ms IS NULL THEN interval '1 minute' ELSE interval '1 second' END
$$;

-- Run DDL of a queue under a short lock_timeout, restoring the caller's setting after.
CREATE OR REPLACE FUNCTION swf._ddl_lock_timeout() RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT '200ms'::text $$;

-- Where a queue's messages live, from its storage: the message table, the archive table and
-- the condition (over alias m) that selects the queue's rows in them.
CREATE OR REPLACE FUNCTION swf._queue_storage(q swf.queues, OUT tbl text, OUT archive text,
                                              OUT filter text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE q.storage WHEN 'pgmq' THEN format('pgmq.%I', 'q_' || q.pgmq_name)
                          ELSE 'swf.transient_messages' END,
           CASE q.storage WHEN 'pgmq' THEN format('pgmq.%I', 'a_' || q.pgmq_name)
                          ELSE 'swf.transient_archive' END,
           CASE q.storage WHEN 'pgmq' THEN 'true' ELSE format('m.queue = %L', q.name) END
$$;

CREATE OR REPLACE FUNCTION swf._queue_get(p_name text) RETURNS swf.queues
LANGUAGE sql STABLE AS $$ SELECT * FROM swf.queues WHERE name = p_name $$;

-- The wake-up trigger body (see the header). TG_ARGV[0] is swf.queues.id.
CREATE OR REPLACE FUNCTION swf._queue_wakeup() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_id integer := TG_ARGV[0]::integer;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(swf._queue_lock_space(), v_id);
    PERFORM swf._queue_wake_locked(v_id, substr(TG_TABLE_NAME, 3), NEW.msg_id);
    RETURN NULL;
END $$;

-- Wake the consumers waiting on queue p_id (pgmq name p_pgmq) for one new message, the
-- queue's shared advisory lock held (see the header): every listener of the queue's channel
-- when a consumer marked it, and the consumer first in line of those asleep on it whose
-- LISTEN session runs, which goes to the back of the line and stays asleep (it reads, and
-- needs no statement to be woken again: consumers take turns, one wake-up per message).
-- Rows of sessions that ended are removed on the way; a row another producer is taking is
-- skipped, so two messages committed at once wake two consumers. p_msg: the message of a
-- queue table's insert; a sleeper that accepts hand-overs (claim_ms, hand_over_key) gets it
-- claimed and sent, signed, with its wake-up (swf._queue_hand_over) and reads nothing. Once this transaction
-- has woken the whole line, a message left over wakes the sleeper it woke first to read.
CREATE OR REPLACE FUNCTION swf._queue_wake_locked(p_id integer, p_pgmq text,
                                                  p_msg bigint DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_channel text;
    v_pid integer;
    v_claim integer;
    v_key text;
    v_payload text;
BEGIN
    UPDATE swf.queue_waiters SET waiting = false WHERE queue_id = p_id AND waiting;
    IF FOUND THEN
        PERFORM swf.notify_hint('swfq_' || p_pgmq);
    END IF;
    LOOP
        -- A line whose first sleeper this transaction woke already was woken whole by it
        -- (the line turns): the other messages of a multi-row insert change nothing more.
        UPDATE swf.queue_sleepers s SET since = clock_timestamp()
         WHERE (s.queue_id, s.channel) = (
               SELECT t.queue_id, t.channel FROM swf.queue_sleepers t
                WHERE t.queue_id = p_id ORDER BY t.since LIMIT 1 FOR UPDATE SKIP LOCKED)
           AND s.xmin <> pg_current_xact_id()::xid
        RETURNING s.channel, s.pid, s.claim_ms, s.hand_over_key
             INTO v_channel, v_pid, v_claim, v_key;
        IF NOT FOUND THEN
            IF p_msg IS NOT NULL THEN
                -- Messages were handed over: the one left over is read by the first
                -- sleeper of the turned line (NOTIFYs alike in one transaction are one).
                SELECT t.channel INTO v_channel FROM swf.queue_sleepers t
                 WHERE t.queue_id = p_id AND t.xmin = pg_current_xact_id()::xid
                 ORDER BY t.since LIMIT 1;
                IF FOUND THEN
                    PERFORM swf.notify_hint(v_channel, 'swfq_' || p_pgmq);
                END IF;
            END IF;
            EXIT;
        END IF;
        IF swf._sleeper_alive(v_pid) THEN
            v_payload := NULL;
            IF p_msg IS NOT NULL AND v_claim IS NOT NULL AND v_key IS NOT NULL THEN
                v_payload := swf._queue_hand_over(p_pgmq, p_msg, v_claim, v_key);
            END IF;
            IF NOT swf.notify_hint(v_channel, coalesce(v_payload, 'swfq_' || p_pgmq))
               AND v_payload IS NOT NULL THEN
                PERFORM swf._queue_give_back(p_pgmq, p_msg, NULL);  -- nobody was told
            END IF;
            EXIT;
        END IF;
        DELETE FROM swf.queue_sleepers WHERE queue_id = p_id AND channel = v_channel;
    END LOOP;
END $$;
REVOKE EXECUTE ON FUNCTION swf._queue_wake_locked(integer, text, bigint) FROM PUBLIC;

-- Claim message p_msg of queue table pgmq.q_<p_pgmq> for a consumer for p_claim_ms
-- milliseconds, as a read does (hidden, read_ct counted: the delivery's receipt), and return
-- the wake-up that carries it: the JSON {"q": queue channel, "id", "r": receipt, "p":
-- priority, "m": message} after its signature with the consumer's key p_key, 64 hex digits
-- of sha256(sha256(key || JSON)) (transport/handover.py): a NOTIFY is a hint anyone who can
-- connect may forge, and only a signed one is taken for a message. NULL, nothing claimed,
-- for a message not visible now
-- (a delay), with a flow key (the limited read delivers those), too long for a NOTIFY, or
-- while PostgreSQL's notification queue is filling (the NOTIFY could be skipped).
CREATE OR REPLACE FUNCTION swf._queue_hand_over(p_pgmq text, p_msg bigint, p_claim_ms integer,
                                                 p_key text)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_receipt integer;
    v_message jsonb;
    v_priority integer;
    v_payload text;
BEGIN
    IF pg_notification_queue_usage() >= swf.notify_queue_limit() / 2 THEN
        RETURN NULL;
    END IF;
    EXECUTE format(
        'UPDATE pgmq.%I m SET vt = clock_timestamp() + make_interval(secs => $2 / 1000.0), '
        '       read_ct = m.read_ct + 1, last_read_at = clock_timestamp() '
        ' WHERE m.msg_id = $1 AND m.vt <= clock_timestamp() '
        '   AND (m.headers ? ''flow'') IS NOT TRUE AND octet_length(m.message::text) <= $3 '
        'RETURNING m.read_ct, m.message, coalesce((m.headers ->> ''priority'')::integer, 0)',
        'q_' || p_pgmq)
        INTO v_receipt, v_message, v_priority USING p_msg, p_claim_ms, 7400;
    IF v_receipt IS NULL THEN
        RETURN NULL;
    END IF;
    v_payload := jsonb_build_object('q', 'swfq_' || p_pgmq, 'id', p_msg, 'r', v_receipt,
                                    'p', v_priority, 'm', v_message)::text;
    RETURN encode(sha256(sha256(convert_to(p_key || v_payload, 'UTF8'))), 'hex') || v_payload;
END $$;
REVOKE EXECUTE ON FUNCTION swf._queue_hand_over(text, bigint, integer, text) FROM PUBLIC;

-- Give back message p_msg of pgmq.q_<p_pgmq>, handed over and not taken: visible at once,
-- its read_ct as before the hand-over. p_receipt: the hand-over's receipt (NULL: whatever
-- it is, for the producer's own transaction).
CREATE OR REPLACE FUNCTION swf._queue_give_back(p_pgmq text, p_msg bigint, p_receipt integer)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    EXECUTE format('UPDATE pgmq.%I m SET vt = clock_timestamp(), read_ct = m.read_ct - 1 '
                   ' WHERE m.msg_id = $1 AND ($2 IS NULL OR m.read_ct = $2)',
                   'q_' || p_pgmq) USING p_msg, p_receipt;
END $$;
REVOKE EXECUTE ON FUNCTION swf._queue_give_back(text, bigint, integer) FROM PUBLIC;

-- Wake the consumers waiting on queue p_id as a new message does (see the header), where no
-- insert fires the trigger: a message visible again (a requeue), a key's slot come free (an
-- ack on a limited queue) or its hold released (sql/functions/limits.sql).
CREATE OR REPLACE FUNCTION swf._queue_wake(p_id integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(swf._queue_lock_space(), p_id);
    PERFORM swf._queue_wake_locked(p_id, pgmq_name) FROM swf.queues WHERE id = p_id;
END $$;
REVOKE EXECUTE ON FUNCTION swf._queue_wake(integer) FROM PUBLIC;

-- A consumer woken on its own channel p_sleeper (payload p_channel, 'swfq_<pgmq name>') for a
-- queue it cannot read now (its prefetch window is full, or it no longer consumes the queue)
-- stops sleeping on it and passes the wake-up on to the next consumer asleep on it; a
-- message handed over to it (p_msg, its receipt p_receipt) is given back first, visible at
-- once. An unknown queue channel is ignored.
CREATE OR REPLACE FUNCTION swf.queue_pass_wake(p_channel text, p_sleeper text,
                                               p_msg bigint DEFAULT NULL,
                                               p_receipt integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    q swf.queues;
BEGIN
    PERFORM swf._require_part('wait on queues', 'client', 'worker');
    SELECT * INTO q FROM swf.queues
     WHERE p_channel LIKE 'swfq\_%' AND pgmq_name = substr(p_channel, 6);
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_msg IS NOT NULL AND p_receipt IS NOT NULL AND q.storage = 'pgmq' THEN
        PERFORM swf._queue_give_back(q.pgmq_name, p_msg, p_receipt);
    END IF;
    PERFORM swf.queue_wake_up(ARRAY[q.name], p_sleeper);
    PERFORM swf._queue_wake(q.id);
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_pass_wake(text, text, bigint, integer) FROM PUBLIC;

-- A consumer (its own channel p_channel) stops sleeping on the given queues: a read filled
-- its batch, so producers need not wake it while it reads. Never waits on a lock (the
-- consumer's event loop runs it).
CREATE OR REPLACE FUNCTION swf.queue_wake_up(p_queues text[], p_channel text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('wait on queues', 'client', 'worker');
    -- A row a producer is waking right now is left: that wake-up arrives and is passed on.
    DELETE FROM swf.queue_sleepers
     WHERE ctid IN (SELECT s.ctid FROM swf.queue_sleepers s JOIN swf.queues q ON q.id = s.queue_id
                     WHERE q.name = ANY (p_queues) AND s.channel = p_channel
                       FOR UPDATE OF s SKIP LOCKED);
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_wake_up(text[], text) FROM PUBLIC;

-- Wake-up trigger of the shared table: as swf._queue_wakeup, per row's queue.
CREATE OR REPLACE FUNCTION swf._transient_wakeup() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    q swf.queues;
BEGIN
    SELECT * INTO q FROM swf.queues WHERE name = NEW.queue;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF q.storage = 'pgmq' THEN
        -- The queue was taken over by a worker's declaration (swf._queue_take_over) after
        -- the publisher looked its storage up: the message goes where the queue is now (that
        -- table's own trigger wakes its consumers).
        EXECUTE format(
            'WITH gone AS (DELETE FROM swf.transient_messages WHERE msg_id = $1 '
            '  RETURNING read_ct, enqueued_at, vt, message, headers) '
            'INSERT INTO pgmq.%I (read_ct, enqueued_at, vt, message, headers) '
            'SELECT read_ct, enqueued_at, vt, message, headers FROM gone',
            'q_' || q.pgmq_name) USING NEW.msg_id;
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(swf._queue_lock_space(), q.id);
    PERFORM swf._queue_wake_locked(q.id, q.pgmq_name);
    RETURN NULL;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = 'swf.transient_messages'::regclass AND tgname = 'swf_wakeup') THEN
        CREATE CONSTRAINT TRIGGER swf_wakeup AFTER INSERT ON swf.transient_messages
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION swf._transient_wakeup();
    END IF;
END $$;

-- Indexes every durable queue table carries (priority read order; cancels by task/root id).
CREATE OR REPLACE FUNCTION swf._queue_indexes(p_pgmq text) RETURNS void
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
--
-- A queue a client created (declared_by 'client') is the workers' to define: a worker's or
-- an operator's declaration takes it over, with the storage and expiry it declares (the
-- messages move along), so a name taken first by a client cannot change how the workers'
-- queue is stored or reaped. A client creates at most swf._client_queue_limit() durable
-- queues (each is a table).
CREATE OR REPLACE FUNCTION swf.queue_ensure(p_name text, p_expires_ms bigint DEFAULT NULL)
RETURNS swf.queues
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    q swf.queues;
    v_part text;
    v_storage text := CASE WHEN p_expires_ms > 0 THEN 'transient' ELSE 'pgmq' END;
    v_pgmq text;
    v_other text;
BEGIN
    -- An existing queue is returned without a part check (only roles granted a part may
    -- EXECUTE this): publishing to it is the hot path of SQL callers and the engine.
    SELECT * INTO q FROM swf.queues WHERE name = p_name;
    IF FOUND THEN
        IF q.declared_by = 'client' AND p_expires_ms IS NOT NULL
           AND swf._require_part('declare a queue', 'client', 'worker') <> 'client' THEN
            RETURN swf._queue_take_over(q, v_storage, p_expires_ms);
        END IF;
        -- A declaration is activity (an expiring queue's x-expires counts from it; a durable
        -- queue unused long enough is removed by retention).
        IF p_expires_ms IS NOT NULL AND (p_expires_ms > 0 OR q.expires_ms IS NULL)
           AND q.last_active < clock_timestamp() - swf._queue_mark_every(q.expires_ms) THEN
            UPDATE swf.queues SET last_active = clock_timestamp() WHERE id = q.id;
        END IF;
        RETURN q;
    END IF;
    v_part := swf._require_part('create a queue', 'client', 'worker');
    PERFORM swf.queue_check_name(p_name);
    IF p_expires_ms IS NULL AND swf.queue_is_transient_name(p_name) THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('queue %L expired (or was deleted); it is not recreated '
                             'without its bindings', p_name);
    END IF;
    IF v_part = 'client' AND v_storage = 'pgmq'
       AND (SELECT count(*) FROM swf.queues WHERE declared_by = 'client' AND storage = 'pgmq')
           >= swf._client_queue_limit() THEN
        RAISE EXCEPTION USING ERRCODE = '54000',
            MESSAGE = format('swf: clients have created %s durable queues, the limit; queue %L '
                             'must be declared by a worker first', swf._client_queue_limit(),
                             p_name);
    END IF;
    v_pgmq := swf._queue_pgmq_name(p_name, v_storage);
    -- Another name with the same pgmq name; the same name, created by a session that
    -- committed since the first look, is returned below (workers started together declare
    -- their queues at the same moment).
    SELECT name INTO v_other FROM swf.queues WHERE pgmq_name = v_pgmq AND name <> p_name;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '23505',
            MESSAGE = format('queue names %L and %L map to the same pgmq queue %s',
                             p_name, v_other, v_pgmq);
    END IF;
    INSERT INTO swf.queues (name, pgmq_name, expires_ms, storage, declared_by)
    VALUES (p_name, v_pgmq, nullif(p_expires_ms, 0), v_storage,
            CASE WHEN v_part = 'client' THEN 'client' END)
    ON CONFLICT DO NOTHING  -- the name's or the pgmq name's index: both, when concurrent
    RETURNING * INTO q;
    IF NOT FOUND THEN  -- created concurrently (we waited for that transaction to commit)
        SELECT * INTO q FROM swf.queues WHERE name = p_name;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = '23505',
                MESSAGE = format('queue name %L maps to pgmq queue %s, which another name '
                                 'took meanwhile', p_name, v_pgmq);
        END IF;
        RETURN q;
    END IF;
    INSERT INTO swf.queue_waiters (queue_id) VALUES (q.id) ON CONFLICT DO NOTHING;
    IF q.storage = 'pgmq' THEN
        PERFORM swf._queue_create_table(q);
    END IF;
    RETURN q;
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_ensure(text, bigint) FROM PUBLIC;

-- How many durable queues clients may create (tables, which workers have not declared).
CREATE OR REPLACE FUNCTION swf._client_queue_limit() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1000 $$;

-- The pgmq name of a queue stored as p_storage: a transient queue's starts with 't_'.
CREATE OR REPLACE FUNCTION swf._queue_pgmq_name(p_name text, p_storage text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE p_storage WHEN 'transient' THEN 't' || substr(swf.queue_pgmq_name(p_name), 2)
                          ELSE swf.queue_pgmq_name(p_name) END
$$;

-- A durable queue's pgmq tables, indexes and wake-up trigger, under a short lock_timeout.
CREATE OR REPLACE FUNCTION swf._queue_create_table(q swf.queues) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_old_timeout text := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout', swf._ddl_lock_timeout(), true);
    PERFORM pgmq.create(q.pgmq_name);
    PERFORM swf._queue_indexes(q.pgmq_name);
    EXECUTE format('CREATE CONSTRAINT TRIGGER swf_wakeup AFTER INSERT ON pgmq.%I '
                   'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW '
                   'EXECUTE FUNCTION swf._queue_wakeup(%s)', 'q_' || q.pgmq_name, q.id);
    PERFORM set_config('lock_timeout', v_old_timeout, true);
END $$;

-- A worker's declaration of a queue a client created: the queue takes the declared storage
-- and expiry, its messages move to the new storage, and it is the workers' from now on.
CREATE OR REPLACE FUNCTION swf._queue_take_over(q swf.queues, p_storage text,
                                                p_expires_ms bigint)
RETURNS swf.queues
LANGUAGE plpgsql AS $$
DECLARE
    v_old     swf.queues;
    v_timeout text;
BEGIN
    -- Under the row's lock, as the queue is now: a concurrent declaration may have taken it.
    SELECT * INTO v_old FROM swf.queues WHERE id = q.id FOR UPDATE;
    IF NOT FOUND THEN  -- deleted meanwhile
        RETURN q;
    END IF;
    IF v_old.declared_by IS DISTINCT FROM 'client' THEN
        RETURN v_old;
    END IF;
    UPDATE swf.queues SET storage = p_storage, expires_ms = nullif(p_expires_ms, 0),
                          declared_by = NULL, last_active = clock_timestamp(),
                          pgmq_name = swf._queue_pgmq_name(q.name, p_storage)
     WHERE id = q.id
    RETURNING * INTO q;
    IF v_old.storage = q.storage THEN
        RETURN q;
    END IF;
    IF q.storage = 'pgmq' THEN
        PERFORM swf._queue_create_table(q);
        EXECUTE format(
            'WITH gone AS (DELETE FROM swf.transient_messages WHERE queue = $1 '
            '  RETURNING msg_id, read_ct, enqueued_at, vt, message, headers) '
            'INSERT INTO pgmq.%I (read_ct, enqueued_at, vt, message, headers) '
            'SELECT read_ct, enqueued_at, vt, message, headers FROM gone ORDER BY msg_id',
            'q_' || q.pgmq_name) USING q.name;
    ELSE
        EXECUTE format(
            'WITH gone AS (DELETE FROM pgmq.%I '
            '  RETURNING msg_id, read_ct, enqueued_at, vt, message, headers) '
            'INSERT INTO swf.transient_messages (queue, priority, read_ct, enqueued_at, vt, '
            '                                    message, headers) '
            'SELECT $1, coalesce((headers ->> ''priority'')::smallint, 0), read_ct, '
            '       enqueued_at, vt, message, coalesce(headers, ''{}'') FROM gone ORDER BY msg_id',
            'q_' || v_old.pgmq_name) USING q.name;
        v_timeout := current_setting('lock_timeout');
        PERFORM set_config('lock_timeout', swf._ddl_lock_timeout(), true);
        PERFORM pgmq.drop_queue(v_old.pgmq_name);
        PERFORM set_config('lock_timeout', v_timeout, true);
    END IF;
    RETURN q;
END $$;

-- The pgmq headers of a kombu message: what the broker sorts and filters on, and the role
-- that published it ("by": a client may revoke only its own tasks, swf.task_revoke).
CREATE OR REPLACE FUNCTION swf.queue_headers(message jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'by', session_user::text,
        'priority', CASE WHEN jsonb_typeof(message #> '{properties,priority}') = 'number'
                         THEN greatest(0, least(9, floor((message #>> '{properties,priority}')::numeric)))::integer
                         ELSE 0 END,
        'task_id', message #>> '{headers,id}',
        'root_id', message #>> '{headers,root_id}',
        -- Only a message with the header swf_flow pays for reading it (limits.sql).
        'flow', CASE WHEN message #> '{headers,swf_flow}' IS NOT NULL
                     THEN swf.flow_of(message) END))
$$;

-- A kombu message as the broker stores it: an object with "body", its "properties" and
-- "headers" objects, a delivery tag and delivery_info filled in where missing. p_caller names
-- the function in the error a malformed message gets.
CREATE OR REPLACE FUNCTION swf._queue_message(p_message jsonb, p_queue text, p_caller text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_msg jsonb := p_message;
BEGIN
    IF v_msg IS NULL OR jsonb_typeof(v_msg) <> 'object' OR NOT v_msg ? 'body' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = p_caller || ': message must be a kombu message object with "body", '
                      '"content-type", "headers" and "properties"';
    END IF;
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
                           jsonb_build_object('exchange', '', 'routing_key', p_queue));
    END IF;
    RETURN v_msg;
END $$;

-- Enqueue kombu messages (the dicts kombu's virtual Channel._put receives) on a queue named
-- as Celery names it, in one insert; returns their ids in the order given. Priority 0..9 (0
-- first, as on Redis), delay in whole seconds. The two storages take different rows (the
-- shared table keys them by queue name and priority). It runs as its owner (a client may
-- publish, not read the queue back), for any part (swf.queue_ensure checks it).
CREATE OR REPLACE FUNCTION swf.queue_send_many(queue text, messages jsonb[],
                                               delay_seconds integer DEFAULT 0)
RETURNS bigint[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    q swf.queues;
    v_msgs jsonb[] := '{}';
    v_headers jsonb[] := '{}';
    v_msg jsonb;
    v_ids bigint[];
    v_caller text := CASE WHEN cardinality(messages) = 1 THEN 'swf.queue_send'
                          ELSE 'swf.queue_send_many' END;
BEGIN
    IF messages IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'swf.queue_send_many: messages must be an array of kombu message objects';
    END IF;
    IF delay_seconds IS NULL OR delay_seconds < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s: delay_seconds must be >= 0, not %s', v_caller, delay_seconds);
    END IF;
    q := swf.queue_ensure(queue_send_many.queue);  -- checks the caller's part
    FOREACH v_msg IN ARRAY messages LOOP
        v_msg := swf._queue_message(v_msg, q.name, v_caller);
        v_msgs := array_append(v_msgs, v_msg);
        v_headers := array_append(v_headers, swf.queue_headers(v_msg));
    END LOOP;
    IF NOT q.limited AND q.storage = 'pgmq'
       AND EXISTS (SELECT 1 FROM unnest(v_headers) AS h WHERE h ? 'flow') THEN
        PERFORM swf.queue_mark_limited(q.name);
    END IF;
    IF q.storage = 'transient' THEN
        WITH sent AS (
            INSERT INTO swf.transient_messages (queue, priority, vt, message, headers)
            SELECT q.name, (u.h ->> 'priority')::smallint,
                   clock_timestamp() + make_interval(secs => delay_seconds), u.m, u.h
              FROM unnest(v_msgs, v_headers) WITH ORDINALITY AS u(m, h, n)
             ORDER BY u.n
            RETURNING msg_id)
        SELECT array_agg(msg_id ORDER BY msg_id) INTO v_ids FROM sent;
    ELSE
        SELECT array_agg(id ORDER BY id) INTO v_ids
          FROM pgmq.send_batch(q.pgmq_name, v_msgs, v_headers, delay_seconds) AS id;
    END IF;
    RETURN coalesce(v_ids, '{}');
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_send_many(text, jsonb[], integer) FROM PUBLIC;

-- Enqueue one kombu message (see swf.queue_send_many); returns its id.
CREATE OR REPLACE FUNCTION swf.queue_send(queue text, message jsonb, delay_seconds integer DEFAULT 0)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
    SELECT (swf.queue_send_many(queue_send.queue, ARRAY[queue_send.message],
                                queue_send.delay_seconds))[1]
$$;
REVOKE EXECUTE ON FUNCTION swf.queue_send(text, jsonb, integer) FROM PUBLIC;

-- Send one message to every queue bound to a fanout exchange; returns the number of copies.
CREATE OR REPLACE FUNCTION swf.queue_fanout(p_exchange text, p_message jsonb) RETURNS integer
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

-- Earliest visibility of the given queues' messages in seconds from now (NULL: empty).
CREATE OR REPLACE FUNCTION swf._queue_next_visible(p_queues text[]) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    s record;
    v_next double precision;
    v_min double precision;
BEGIN
    FOR q IN SELECT * FROM swf.queues WHERE name = ANY (p_queues) LOOP
        SELECT * INTO s FROM swf._queue_storage(q);
        IF q.limited AND q.storage = 'pgmq' THEN
            v_next := swf._queue_next_ready(q);
        ELSE
            EXECUTE format('SELECT extract(epoch FROM min(m.vt) - clock_timestamp()) FROM %s m '
                           'WHERE %s', s.tbl, s.filter) INTO v_next;
        END IF;
        IF v_next IS NOT NULL THEN
            v_min := greatest(0, least(coalesce(v_min, v_next), v_next));
        END IF;
    END LOOP;
    RETURN v_min;
END $$;

-- Arm the wake-up of the given queues (see the header): mark them, so that the next message
-- committed to one of them NOTIFYs its channel (every listener of it). Returns as
-- swf._queue_wait does.
CREATE OR REPLACE FUNCTION swf.queue_arm(p_queues text[]) RETURNS double precision
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('wait on queues', 'client', 'worker');
    RETURN swf._queue_wait(p_queues, NULL, NULL);
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_arm(text[]) FROM PUBLIC;

-- The exclusive wake-up lock of queue p_id for the rest of the transaction, waiting up to
-- 20 ms for the producers committing to it now (each holds it shared from its trigger to its
-- commit, well under that); false when they take longer. A consumer that found a producer
-- committing and came back at once (a try-lock) would read and try again in a loop for as
-- long as producers publish back to back: with four idle workers on two cores that loop
-- doubled the CPU per task and halved the publish rate. Producers that come meanwhile wait
-- behind the request, for no longer than the sleep's own short transaction.
CREATE OR REPLACE FUNCTION swf._queue_lock_briefly(p_id integer) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, swf, pg_temp AS $$
DECLARE
    v_timeout text;
BEGIN
    IF pg_try_advisory_xact_lock(swf._queue_lock_space(), p_id) THEN
        RETURN true;
    END IF;
    v_timeout := current_setting('lock_timeout');
    BEGIN
        PERFORM set_config('lock_timeout', '20ms', true);
        PERFORM pg_advisory_xact_lock(swf._queue_lock_space(), p_id);
        PERFORM set_config('lock_timeout', v_timeout, true);
        RETURN true;
    EXCEPTION WHEN lock_not_available THEN
        PERFORM set_config('lock_timeout', v_timeout, true);
        RETURN false;
    END;
END $$;
REVOKE EXECUTE ON FUNCTION swf._queue_lock_briefly(integer) FROM PUBLIC;

-- Wait on the given queues (see the header), each under its wake-up lock: mark them
-- (p_channel NULL: swf.queue_arm) or put consumer p_channel, LISTENed by session p_pid, to
-- sleep on them (swf.queue_sleep; asleep already: its place in line is kept). The queues
-- are marked as used now on the way. Returns seconds until the earliest message of the
-- queues is visible, computed after waiting: 0 means one is visible now, or a producer kept
-- a lock too long, so the caller reads again instead of sleeping; NULL means the queues are
-- empty. Any message committed later wakes the caller.
CREATE OR REPLACE FUNCTION swf._queue_wait(p_queues text[], p_channel text, p_pid integer,
                                           p_claim_ms integer DEFAULT NULL,
                                           p_key text DEFAULT NULL)
RETURNS double precision
LANGUAGE plpgsql SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    q swf.queues;
    v_busy boolean := false;
BEGIN
    FOR q IN SELECT * FROM swf.queues s WHERE s.name = ANY (p_queues) ORDER BY s.id LOOP
        IF NOT swf._queue_lock_briefly(q.id) THEN
            v_busy := true;
        ELSIF p_channel IS NULL THEN
            INSERT INTO swf.queue_waiters AS w (queue_id, waiting) VALUES (q.id, true)
            ON CONFLICT (queue_id) DO UPDATE SET waiting = true WHERE NOT w.waiting;
        ELSE
            INSERT INTO swf.queue_sleepers AS w (queue_id, channel, pid, claim_ms,
                                                 hand_over_key)
            VALUES (q.id, p_channel, p_pid, p_claim_ms, p_key)
            ON CONFLICT (queue_id, channel)
            DO UPDATE SET pid = EXCLUDED.pid, claim_ms = EXCLUDED.claim_ms,
                          hand_over_key = EXCLUDED.hand_over_key
             WHERE (w.pid, w.claim_ms, w.hand_over_key)
                   IS DISTINCT FROM (EXCLUDED.pid, EXCLUDED.claim_ms, EXCLUDED.hand_over_key);
        END IF;
    END LOOP;
    UPDATE swf.queues s SET last_active = clock_timestamp()
     WHERE s.name = ANY (p_queues)
       AND s.last_active < clock_timestamp() - swf._queue_mark_every(s.expires_ms);
    IF v_busy THEN
        RETURN 0;
    END IF;
    RETURN swf._queue_next_visible(p_queues);
END $$;
REVOKE EXECUTE ON FUNCTION swf._queue_wait(text[], text, integer, integer, text) FROM PUBLIC;

-- Put a consumer to sleep on the given queues: the consumers asleep on a queue are woken one
-- per message committed to it, in turn, each on its own channel p_channel ('swfw_' and 16
-- hex digits, LISTENed by the session whose backend pid is p_pid), with the queue's channel
-- as payload, or with the message itself when p_claim_ms and p_key are given
-- (transport/handover.py: claimed for the consumer that long, until its visibility keeper
-- extends it, and signed with the consumer's secret p_key, 32 hex digits). Returns as
-- swf._queue_wait does.
CREATE OR REPLACE FUNCTION swf.queue_sleep(p_queues text[], p_channel text, p_pid integer,
                                           p_claim_ms integer DEFAULT NULL,
                                           p_key text DEFAULT NULL)
RETURNS double precision
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('wait on queues', 'client', 'worker');
    IF p_channel IS NULL OR p_channel !~ '^swfw_[0-9a-f]{16}$' OR p_pid IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('swf.queue_sleep: %L is not a consumer''s wake-up channel '
                             '(swfw_ and 16 hex digits) with its session''s pid', p_channel);
    END IF;
    IF NOT swf._sleeper_alive(p_pid) THEN
        -- Not a session of this server (a pooler in session mode reports its own key, not
        -- the server's pid): every wake-up would skip it. The queues are marked instead, as
        -- swf.queue_arm does, and the consumer is woken on the queues' channels.
        RETURN swf._queue_wait(p_queues, NULL, NULL);
    END IF;
    IF p_claim_ms IS NOT NULL AND p_claim_ms <= 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('swf.queue_sleep: claim_ms must be > 0, not %s', p_claim_ms);
    END IF;
    IF p_key IS NOT NULL AND p_key !~ '^[0-9a-f]{32}$' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'swf.queue_sleep: a hand-over key is 32 hex digits';
    END IF;
    RETURN swf._queue_wait(p_queues, p_channel, p_pid, p_claim_ms, p_key);
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_sleep(text[], text, integer, integer, text) FROM PUBLIC;

-- Deliveries are fenced. A read increments a message's read_ct, and the consumer keeps the
-- value it read as the delivery's receipt: acking, rejecting, requeueing and extending
-- match msg_id AND receipt, so a holder whose visibility timeout lapsed (the message was
-- delivered again, to another consumer) changes nothing. p_receipts[i] is the receipt of
-- p_ids[i]; a NULL receipt (or p_receipts NULL: SQL callers, workers of older releases)
-- matches any delivery. Each function returns how many messages it changed: fewer than
-- asked means stale deliveries.

-- Dead-letter messages: moved from the queue to swf.dead_letters with the reason (the
-- broker's one dead-letter store, whatever the queue's storage). The transaction commits
-- with synchronous_commit on (SET LOCAL: the setting at commit is the transaction's, not a
-- function's), whatever the session's: the dead letter, and the failed workflow attempt the
-- engine's trigger on swf.dead_letters writes with it, survive a server crash.
CREATE OR REPLACE FUNCTION swf._queue_bury(q swf.queues, p_ids bigint[], p_reason text,
                                           p_receipts integer[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    s record := swf._queue_storage(q);
    n integer;
BEGIN
    PERFORM set_config('synchronous_commit', 'on', true);
    EXECUTE format(
        'WITH gone AS (DELETE FROM %s m USING unnest($1::bigint[], $4::integer[]) '
        '                                AS d(msg_id, receipt) '
        '               WHERE %s AND m.msg_id = d.msg_id '
        '                 AND (d.receipt IS NULL OR m.read_ct = d.receipt) '
        '  RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.message, m.headers) '
        'INSERT INTO swf.dead_letters (queue, msg_id, read_ct, enqueued_at, reason, message, '
        '                              headers) '
        'SELECT $2, msg_id, read_ct, enqueued_at, $3, message, coalesce(headers, ''{}'') '
        '  FROM gone ORDER BY msg_id', s.tbl, s.filter) USING p_ids, q.name, p_reason, p_receipts;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- Acknowledge: delete delivered messages, or (p_archive: archive_acked) move them to the
-- queue's archive, pgmq's own for a durable queue, swf.transient_archive for a transient one
-- (copies that outlive their queue).
CREATE OR REPLACE FUNCTION swf.queue_ack(p_queue text, p_ids bigint[], p_archive boolean DEFAULT false,
                                         p_receipts integer[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    s record;
    v_ids bigint[];
    n integer;
BEGIN
    IF q.id IS NULL THEN
        RETURN 0;
    END IF;
    SELECT * INTO s FROM swf._queue_storage(q);
    IF NOT p_archive THEN
        EXECUTE format('DELETE FROM %s m USING unnest($1::bigint[], $2::integer[]) '
                       '                   AS d(msg_id, receipt) '
                       ' WHERE %s AND m.msg_id = d.msg_id '
                       '   AND (d.receipt IS NULL OR m.read_ct = d.receipt)', s.tbl, s.filter)
          USING p_ids, p_receipts;
    ELSIF q.storage = 'pgmq' THEN
        -- The deliveries still ours, locked (a read skips them) until pgmq archives them.
        EXECUTE format('SELECT array_agg(x.msg_id) FROM ('
                       '  SELECT m.msg_id FROM %s m, unnest($1::bigint[], $2::integer[]) '
                       '                            AS d(msg_id, receipt) '
                       '   WHERE m.msg_id = d.msg_id '
                       '     AND (d.receipt IS NULL OR m.read_ct = d.receipt) '
                       '     FOR UPDATE OF m) x', s.tbl)
          INTO v_ids USING p_ids, p_receipts;
        IF v_ids IS NULL THEN
            RETURN 0;
        END IF;
        SELECT count(*) INTO n FROM pgmq.archive(q.pgmq_name, v_ids);
        RETURN n;
    ELSE
        WITH gone AS (
            DELETE FROM swf.transient_messages t
             USING unnest(p_ids, p_receipts) AS d(msg_id, receipt)
             WHERE t.queue = q.name AND t.msg_id = d.msg_id
               AND (d.receipt IS NULL OR t.read_ct = d.receipt)
            RETURNING t.*)
        INSERT INTO swf.transient_archive (msg_id, queue, read_ct, enqueued_at, vt, message,
                                           headers)
        SELECT g.msg_id, g.queue, g.read_ct, g.enqueued_at, g.vt, g.message, g.headers FROM gone g
        ON CONFLICT (msg_id) DO NOTHING;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- Reject: visible again at once (p_requeue) or dead-lettered with p_reason.
CREATE OR REPLACE FUNCTION swf.queue_reject(p_queue text, p_ids bigint[], p_requeue boolean,
                                            p_reason text DEFAULT 'rejected',
                                            p_receipts integer[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    s record;
    n integer;
BEGIN
    IF q.id IS NULL THEN
        RETURN 0;
    END IF;
    IF NOT p_requeue THEN
        RETURN swf._queue_bury(q, p_ids, coalesce(p_reason, 'rejected'), p_receipts);
    END IF;
    SELECT * INTO s FROM swf._queue_storage(q);
    EXECUTE format('UPDATE %s m SET vt = clock_timestamp() '
                   '  FROM unnest($1::bigint[], $2::integer[]) AS d(msg_id, receipt) '
                   ' WHERE %s AND m.msg_id = d.msg_id '
                   '   AND (d.receipt IS NULL OR m.read_ct = d.receipt)', s.tbl, s.filter)
      USING p_ids, p_receipts;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN  -- visible again: wake a waiting consumer, as a new message does
        PERFORM swf._queue_wake(q.id);
    END IF;
    RETURN n;
END $$;

-- Extend the visibility of held messages: p_queues[i] holds p_ids[i] (receipt
-- p_receipts[i]).
CREATE OR REPLACE FUNCTION swf.queue_extend(p_queues text[], p_ids bigint[], p_vt double precision,
                                            p_receipts integer[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q swf.queues;
    s record;
    n integer := 0;
    m integer;
BEGIN
    FOR q IN SELECT * FROM swf.queues WHERE name = ANY (p_queues) LOOP
        SELECT * INTO s FROM swf._queue_storage(q);
        EXECUTE format('UPDATE %s m SET vt = clock_timestamp() + make_interval(secs => $1) '
                       '  FROM unnest($2::bigint[], $3::integer[]) AS d(msg_id, receipt) '
                       ' WHERE %s AND m.msg_id = d.msg_id '
                       '   AND (d.receipt IS NULL OR m.read_ct = d.receipt)', s.tbl, s.filter)
          USING p_vt,
                ARRAY(SELECT p_ids[i] FROM generate_subscripts(p_queues, 1) i
                       WHERE p_queues[i] = q.name ORDER BY i),
                ARRAY(SELECT p_receipts[i] FROM generate_subscripts(p_queues, 1) i
                       WHERE p_queues[i] = q.name ORDER BY i);
        GET DIAGNOSTICS m = ROW_COUNT;
        n := n + m;
    END LOOP;
    RETURN n;
END $$;

-- Messages waiting in a queue: visible or delayed, not those held by a consumer.
CREATE OR REPLACE FUNCTION swf.queue_size(p_queue text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    s record;
    n bigint;
BEGIN
    PERFORM swf._require_part('count a queue''s messages', 'client', 'worker');
    IF q.id IS NULL THEN
        RETURN 0;
    END IF;
    SELECT * INTO s FROM swf._queue_storage(q);
    EXECUTE format('SELECT count(*) FROM %s m WHERE %s '
                   'AND (m.read_ct = 0 OR m.vt <= clock_timestamp())', s.tbl, s.filter) INTO n;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_size(text) FROM PUBLIC;

-- Delete the waiting messages of a queue (those held by consumers stay); returns the count.
CREATE OR REPLACE FUNCTION swf.queue_purge(p_queue text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    s record;
    n bigint;
BEGIN
    PERFORM swf._require_part('purge a queue');
    IF q.id IS NULL THEN
        RETURN 0;
    END IF;
    SELECT * INTO s FROM swf._queue_storage(q);
    EXECUTE format('DELETE FROM %s m WHERE %s AND (m.read_ct = 0 OR m.vt <= clock_timestamp())',
                   s.tbl, s.filter);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_purge(text) FROM PUBLIC;

-- Drop a queue: its mapping and bindings, its messages; a durable queue's pgmq tables under a
-- short lock_timeout (lock_not_available reaches the caller, who retries: nothing changed).
CREATE OR REPLACE FUNCTION swf.queue_drop(p_queue text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    v_old_timeout text;
BEGIN
    IF q.id IS NULL THEN
        RETURN false;
    END IF;
    IF q.storage = 'transient' THEN
        PERFORM swf._require_part('delete a transient queue', 'worker');
    ELSE
        PERFORM swf._require_part('delete a durable queue');
    END IF;
    v_old_timeout := current_setting('lock_timeout');
    PERFORM set_config('lock_timeout', swf._ddl_lock_timeout(), true);
    DELETE FROM swf.queues WHERE id = q.id;  -- cascades: bindings, waiters, transient messages
    IF q.storage = 'pgmq' THEN
        PERFORM pgmq.drop_queue(q.pgmq_name);
    END IF;
    PERFORM set_config('lock_timeout', v_old_timeout, true);
    RETURN true;
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_drop(text) FROM PUBLIC;

-- Remove expired queues (x-expires / auto_delete, unused that long). Transient queues go
-- with a DELETE; a legacy expiring pgmq queue whose DROP cannot get its lock at once (a
-- pg_dump, a long transaction) is left for the next pass, and the pass stops there.
CREATE OR REPLACE FUNCTION swf.queue_reap() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    q swf.queues;
    n integer := 0;
BEGIN
    PERFORM swf._require_part('reap expired queues', 'worker');
    -- Consumers whose LISTEN session ended (a killed worker) sleep no more.
    DELETE FROM swf.queue_sleepers s
     WHERE NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(s.pid));
    FOR q IN
        SELECT * FROM swf.queues
         WHERE expires_ms IS NOT NULL
           AND last_active < clock_timestamp() - make_interval(secs => expires_ms / 1000.0)
           AND (consumer_pid IS NULL
                OR NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(consumer_pid)))
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
REVOKE EXECUTE ON FUNCTION swf.queue_reap() FROM PUBLIC;

-- Mark consumed queues as used now: expiring ones always (returned: a consumed expiring
-- queue missing from the result expired meanwhile), durable ones at most once a minute.
-- p_pid: the backend pid of the consumer's LISTEN session (NULL: none); an expiring queue is
-- not reaped while that session runs (swf.queue_reap checks, not this function: it runs every
-- second for every worker). A pid that is no session of this server (a pooler's key) keeps
-- nothing alive.
CREATE OR REPLACE FUNCTION swf.queue_touch(p_queues text[], p_pid integer DEFAULT NULL)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('keep queues alive', 'client', 'worker');
    RETURN QUERY
        UPDATE swf.queues SET last_active = clock_timestamp(),
                              consumer_pid = CASE WHEN expires_ms IS NULL THEN NULL
                                                  ELSE p_pid END
         WHERE name = ANY (p_queues)
           AND (expires_ms IS NOT NULL
                OR last_active < clock_timestamp() - swf._queue_mark_every(expires_ms))
        RETURNING name;
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_touch(text[], integer) FROM PUBLIC;

-- Bind a queue to an exchange (creating the queue when missing).
CREATE OR REPLACE FUNCTION swf.queue_bind(p_exchange text, p_routing_key text, p_pattern text,
                                          p_queue text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf.queue_ensure(p_queue);  -- checks the caller's part
    INSERT INTO swf.queue_bindings (exchange, routing_key, pattern, queue)
    VALUES (p_exchange, coalesce(p_routing_key, ''), p_pattern, p_queue)
    ON CONFLICT DO NOTHING;
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_bind(text, text, text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION swf.queue_unbind(p_exchange text, p_routing_key text, p_queue text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('unbind a queue', 'worker');
    DELETE FROM swf.queue_bindings
     WHERE exchange = p_exchange AND routing_key = coalesce(p_routing_key, '') AND queue = p_queue;
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_unbind(text, text, text) FROM PUBLIC;

-- The message tables of all queues: one per durable queue, and the shared table of the
-- transient queues (each once).
CREATE OR REPLACE FUNCTION swf._queue_tables() RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT (swf._queue_storage(q)).tbl FROM swf.queues q ORDER BY 1
$$;

-- Delete queued (not held) messages of the given Celery task ids from every queue: an index
-- probe per queue table.
CREATE OR REPLACE FUNCTION swf.queue_remove_tasks(task_ids text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_tbl text;
    n integer := 0;
    m integer;
BEGIN
    IF cardinality(task_ids) IS NULL OR cardinality(task_ids) = 0 THEN
        RETURN 0;
    END IF;
    FOR v_tbl IN SELECT swf._queue_tables() LOOP
        EXECUTE format('DELETE FROM %s WHERE (headers ->> ''task_id'') = ANY ($1) '
                       'AND (read_ct = 0 OR vt <= clock_timestamp())', v_tbl)
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_tbl  text;
    v_n    integer;
    v_ids  text[];
BEGIN
    PERFORM swf._require_part('cancel a canvas');
    removed := 0;
    held := '{}';
    IF p_root IS NULL THEN
        RETURN NEXT;
        RETURN;
    END IF;
    FOR v_tbl IN SELECT swf._queue_tables() LOOP
        EXECUTE format(
            'WITH m AS (SELECT msg_id, headers ->> ''task_id'' AS task_id, '
            '                  (read_ct = 0 OR vt <= clock_timestamp()) AS queued '
            '             FROM %1$s WHERE (headers ->> ''root_id'') = $1 FOR UPDATE), '
            'gone AS (DELETE FROM %1$s t USING m WHERE t.msg_id = m.msg_id AND m.queued '
            '         RETURNING 1) '
            'SELECT (SELECT count(*) FROM gone), array_agg(m.task_id) FILTER (WHERE NOT m.queued) '
            '  FROM m', v_tbl)
           INTO v_n, v_ids USING p_root;
        removed := removed + coalesce(v_n, 0);
        held := held || coalesce(v_ids, '{}');
    END LOOP;
    RETURN NEXT;
END $$;
REVOKE EXECUTE ON FUNCTION swf.cancel_canvas(text) FROM PUBLIC;

-- Dead-lettered messages of a queue (newest first), with the reason; they outlive their queue.
-- msg_id is the message's id in its queue.
CREATE OR REPLACE FUNCTION swf.queue_dead_letters(p_queue text, p_limit integer DEFAULT 100)
RETURNS TABLE (msg_id bigint, read_ct integer, archived_at timestamptz, reason text,
               message jsonb)
LANGUAGE sql STABLE AS $$
    SELECT d.msg_id, d.read_ct, d.dead_at, d.reason, d.message
      FROM swf.dead_letters d
     WHERE d.queue = p_queue
     ORDER BY d.id DESC
     LIMIT p_limit
$$;

-- Send dead letters of a queue (p_ids: those msg_ids; NULL: all) to the queue again, as new
-- messages; returns how many.
CREATE OR REPLACE FUNCTION swf.queue_requeue_dead_letters(p_queue text, p_ids bigint[])
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_message jsonb;
    n integer := 0;
BEGIN
    PERFORM swf._require_part('requeue dead letters');
    FOR v_message IN
        WITH gone AS (
            DELETE FROM swf.dead_letters d
             WHERE d.queue = p_queue AND (p_ids IS NULL OR d.msg_id = ANY (p_ids))
            RETURNING d.id, d.message)
        SELECT message FROM gone ORDER BY id
    LOOP
        PERFORM swf.queue_send(p_queue, v_message, 0);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_requeue_dead_letters(text, bigint[]) FROM PUBLIC;

-- Delete dead letters of a queue (p_ids: those msg_ids; NULL: all); returns how many.
CREATE OR REPLACE FUNCTION swf.queue_purge_dead_letters(p_queue text, p_ids bigint[])
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    PERFORM swf._require_part('purge dead letters');
    DELETE FROM swf.dead_letters d
     WHERE d.queue = p_queue AND (p_ids IS NULL OR d.msg_id = ANY (p_ids));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_purge_dead_letters(text, bigint[]) FROM PUBLIC;

-- == Flow control: the read of a limited queue (see sql/functions/limits.sql) ==============
--
-- A queue marked limited (swf.queue_mark_limited: one of its messages carries a flow key) is
-- read here instead of by the plain read of transport/storage.sql, which skips keyed messages
-- (so a consumer that has not yet seen the mark never delivers one unlimited). The keys of
-- the queue, and its messages without a key as one more participant ('' in the ring, before
-- every key), take turns: the read walks the ring from where the last read stopped
-- (swf.flow_turns), gives each participant that may deliver now its allowance (not held;
-- tokens left; fewer deliveries held than its concurrency), then hands out p_qty deliveries
-- one per participant per round. A key that may not deliver is not read at all: its
-- messages stay queued, untouched, and swf._queue_next_ready tells an idle consumer when to
-- look again. Keys another reader is serving right now (its advisory try-lock) are skipped,
-- so concurrent readers never wait on each other, and a key's count of held deliveries is
-- read under that lock, after the previous reader's commit.

-- The next participant of a limited queue's ring after p_cur ('' : the unkeyed messages;
-- NULL: before the start), wrapping to '' after the last key.
CREATE OR REPLACE FUNCTION swf._flow_next_key(p_tbl text, p_cur text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_key text;
BEGIN
    IF p_cur IS NULL THEN
        RETURN '';
    END IF;
    EXECUTE format('SELECT min(m.headers #>> ''{flow,key}'') FROM %s m '
                   ' WHERE m.headers ? ''flow'' AND (m.headers #>> ''{flow,key}'') > $1', p_tbl)
       INTO v_key USING p_cur;
    RETURN coalesce(v_key, '');
END $$;

CREATE OR REPLACE FUNCTION swf.queue_read_limited(p_queue text, p_qty integer,
                                                  p_vt double precision,
                                                  p_acks bigint[] DEFAULT '{}',
                                                  p_receipts integer[] DEFAULT '{}')
RETURNS TABLE (msg_id bigint, read_ct integer, message jsonb, priority integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    v_tbl text;
    v_start text;
    v_cur text;
    v_first text;
    v_flow jsonb;
    v_state swf.flow_keys;
    v_allow integer;
    v_held integer;
    v_tokens double precision;
    v_keys text[] := '{}';
    v_allows integer[] := '{}';
    v_rates double precision[] := '{}';
    v_bursts double precision[] := '{}';
    v_takes integer[];
    v_left integer := greatest(p_qty, 0);
    v_last integer;
    v_given boolean;
    v_scanned integer := 0;
    v_n integer;
    i integer;
BEGIN
    PERFORM swf._require_part('read a queue', 'worker');
    IF q.id IS NULL OR q.storage <> 'pgmq' THEN
        RETURN;
    END IF;
    v_tbl := format('pgmq.%I', 'q_' || q.pgmq_name);
    -- The acks pending on this queue (as the plain read does: rows without a receipt).
    IF cardinality(p_acks) > 0 THEN
        RETURN QUERY EXECUTE format(
            'DELETE FROM %s m USING unnest($1::bigint[], $2::integer[]) AS d(msg_id, receipt) '
            ' WHERE m.msg_id = d.msg_id AND m.read_ct = d.receipt '
            'RETURNING m.msg_id, NULL::integer, NULL::jsonb, NULL::integer', v_tbl)
          USING p_acks, p_receipts;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        IF v_n > 0 THEN  -- slots came free: a consumer idling on a full key may deliver now
            PERFORM swf._queue_wake(q.id);
        END IF;
    END IF;
    IF v_left = 0 THEN
        RETURN;
    END IF;
    SELECT t.last_key INTO v_start FROM swf.flow_turns t WHERE t.queue_id = q.id;
    v_cur := v_start;
    LOOP
        v_cur := swf._flow_next_key(v_tbl, v_cur);
        EXIT WHEN v_cur = v_first;  -- the whole ring seen
        v_first := coalesce(v_first, v_cur);
        v_scanned := v_scanned + 1;
        EXIT WHEN v_scanned > swf._flow_scan_limit();
        IF v_cur = '' THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s m WHERE (m.headers ? ''flow'') IS NOT TRUE '
                           '                 AND m.vt <= clock_timestamp())', v_tbl)
               INTO v_given;
            CONTINUE WHEN NOT v_given;
            v_keys := v_keys || ''::text;
            v_allows := v_allows || v_left;
            v_rates := v_rates || NULL::double precision;
            v_bursts := v_bursts || NULL::double precision;
        ELSE
            -- The key's oldest visible message carries the limits it is read under.
            EXECUTE format('SELECT m.headers -> ''flow'' FROM %s m '
                           ' WHERE m.headers ? ''flow'' AND (m.headers #>> ''{flow,key}'') = $1 '
                           '   AND m.vt <= clock_timestamp() ORDER BY m.msg_id LIMIT 1', v_tbl)
               INTO v_flow USING v_cur;
            CONTINUE WHEN v_flow IS NULL;
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(swf._flow_lock_space(), hashtext(v_cur));
            SELECT * INTO v_state FROM swf.flow_keys k WHERE k.key = v_cur;
            CONTINUE WHEN v_state.held_until > clock_timestamp();
            v_allow := v_left;
            IF v_flow ? 'concurrency' THEN
                EXECUTE format('SELECT count(*) FROM %s m WHERE m.headers ? ''flow'' '
                               '   AND (m.headers #>> ''{flow,key}'') = $1 '
                               '   AND m.vt > clock_timestamp() AND m.read_ct > 0', v_tbl)
                   INTO v_held USING v_cur;
                v_allow := least(v_allow, (v_flow ->> 'concurrency')::integer - v_held);
            END IF;
            IF v_flow ? 'rate' THEN
                v_tokens := swf._flow_tokens(v_state, (v_flow ->> 'rate')::double precision,
                                             swf._flow_burst(v_flow));
                v_allow := least(v_allow, floor(v_tokens)::integer);
            END IF;
            CONTINUE WHEN v_allow < 1;
            v_keys := v_keys || v_cur;
            v_allows := v_allows || v_allow;
            v_rates := v_rates || (v_flow ->> 'rate')::double precision;
            v_bursts := v_bursts || CASE WHEN v_flow ? 'rate' THEN swf._flow_burst(v_flow) END;
        END IF;
        EXIT WHEN cardinality(v_keys) >= v_left;  -- one turn each is all this read gives
    END LOOP;
    IF cardinality(v_keys) = 0 THEN
        RETURN;
    END IF;
    -- Turns: one delivery per participant per round, while deliveries are left.
    v_takes := array_fill(0, ARRAY[cardinality(v_keys)]);
    LOOP
        v_given := false;
        FOR i IN 1 .. cardinality(v_keys) LOOP
            EXIT WHEN v_left = 0;
            IF v_takes[i] < v_allows[i] THEN
                v_takes[i] := v_takes[i] + 1;
                v_left := v_left - 1;
                v_last := i;
                v_given := true;
            END IF;
        END LOOP;
        EXIT WHEN v_left = 0 OR NOT v_given;
    END LOOP;
    FOR i IN 1 .. cardinality(v_keys) LOOP
        CONTINUE WHEN v_takes[i] = 0;
        IF v_keys[i] = '' THEN
            RETURN QUERY EXECUTE format(
                'WITH picked AS ('
                '  SELECT m.msg_id FROM %1$s m '
                '   WHERE (m.headers ? ''flow'') IS NOT TRUE AND m.vt <= clock_timestamp() '
                '   ORDER BY coalesce((m.headers ->> ''priority'')::integer, 0), m.msg_id '
                '   LIMIT $2 FOR UPDATE SKIP LOCKED) '
                'UPDATE %1$s m SET vt = clock_timestamp() + make_interval(secs => $3), '
                '       read_ct = m.read_ct + 1, last_read_at = clock_timestamp() '
                '  FROM picked WHERE m.msg_id = picked.msg_id '
                'RETURNING m.msg_id, m.read_ct, m.message, '
                '          coalesce((m.headers ->> ''priority'')::integer, 0)', v_tbl)
              USING v_keys[i], v_takes[i], p_vt;
            CONTINUE;
        END IF;
        RETURN QUERY EXECUTE format(
            'WITH picked AS ('
            '  SELECT m.msg_id FROM %1$s m '
            '   WHERE m.headers ? ''flow'' AND (m.headers #>> ''{flow,key}'') = $1 '
            '     AND m.vt <= clock_timestamp() '
            '   ORDER BY m.msg_id LIMIT $2 FOR UPDATE SKIP LOCKED) '
            'UPDATE %1$s m SET vt = clock_timestamp() + make_interval(secs => $3), '
            '       read_ct = m.read_ct + 1, last_read_at = clock_timestamp() '
            '  FROM picked WHERE m.msg_id = picked.msg_id '
            'RETURNING m.msg_id, m.read_ct, m.message, '
            '          coalesce((m.headers ->> ''priority'')::integer, 0)', v_tbl)
          USING v_keys[i], v_takes[i], p_vt;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        IF v_rates[i] IS NOT NULL AND v_n > 0 THEN
            SELECT * INTO v_state FROM swf.flow_keys k WHERE k.key = v_keys[i];
            INSERT INTO swf.flow_keys AS k (key, tokens, refilled_at)
            VALUES (v_keys[i], swf._flow_tokens(v_state, v_rates[i], v_bursts[i]) - v_n,
                    clock_timestamp())
            ON CONFLICT (key) DO UPDATE SET tokens = EXCLUDED.tokens,
                                            refilled_at = EXCLUDED.refilled_at;
        END IF;
    END LOOP;
    IF v_last IS NOT NULL THEN
        INSERT INTO swf.flow_turns AS t (queue_id, last_key) VALUES (q.id, v_keys[v_last])
        ON CONFLICT (queue_id) DO UPDATE SET last_key = EXCLUDED.last_key;
    END IF;
END $$;
REVOKE EXECUTE ON FUNCTION swf.queue_read_limited(text, integer, double precision, bigint[],
                                                  integer[]) FROM PUBLIC;

-- Seconds until a limited queue may deliver (0: now; NULL: nothing it could deliver on a
-- clock; a key at its concurrency waits for an ack, found by the polling fallback): its
-- unkeyed messages, and per key its earliest message (delayed, or held by a consumer until
-- its visibility timeout ends), hold and tokens.
CREATE OR REPLACE FUNCTION swf._queue_next_ready(q swf.queues) RETURNS double precision
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_tbl text := format('pgmq.%I', 'q_' || q.pgmq_name);
    v_cur text;
    v_first text;
    v_flow jsonb;
    v_state swf.flow_keys;
    v_wait double precision;
    v_min double precision;
    v_held integer;
    v_scanned integer := 0;
BEGIN
    EXECUTE format('SELECT extract(epoch FROM min(m.vt) - clock_timestamp()) FROM %s m '
                   ' WHERE (m.headers ? ''flow'') IS NOT TRUE', v_tbl) INTO v_min;
    IF v_min <= 0 THEN
        RETURN 0;
    END IF;
    v_cur := '';
    LOOP
        v_cur := swf._flow_next_key(v_tbl, v_cur);
        EXIT WHEN v_cur = '' OR v_scanned >= swf._flow_scan_limit();
        v_scanned := v_scanned + 1;
        EXECUTE format('SELECT m.headers -> ''flow'', '
                       '       extract(epoch FROM m.vt - clock_timestamp()) FROM %s m '
                       ' WHERE m.headers ? ''flow'' AND (m.headers #>> ''{flow,key}'') = $1 '
                       ' ORDER BY m.vt LIMIT 1', v_tbl)
           INTO v_flow, v_wait USING v_cur;
        CONTINUE WHEN v_flow IS NULL;
        v_wait := greatest(v_wait, 0);
        SELECT * INTO v_state FROM swf.flow_keys k WHERE k.key = v_cur;
        IF v_state.held_until > clock_timestamp() THEN
            v_wait := greatest(v_wait, extract(epoch FROM v_state.held_until - clock_timestamp()));
        END IF;
        IF v_flow ? 'rate' THEN
            v_wait := greatest(v_wait, (1 - swf._flow_tokens(v_state,
                                              (v_flow ->> 'rate')::double precision,
                                              swf._flow_burst(v_flow)))
                                       / (v_flow ->> 'rate')::double precision);
        END IF;
        IF v_flow ? 'concurrency' THEN
            EXECUTE format('SELECT count(*) FROM %s m WHERE m.headers ? ''flow'' '
                           '   AND (m.headers #>> ''{flow,key}'') = $1 '
                           '   AND m.vt > clock_timestamp() AND m.read_ct > 0', v_tbl)
               INTO v_held USING v_cur;
            CONTINUE WHEN v_held >= (v_flow ->> 'concurrency')::integer;
        END IF;
        v_min := least(coalesce(v_min, v_wait), v_wait);
        EXIT WHEN v_min <= 0;
    END LOOP;
    RETURN CASE WHEN v_min IS NOT NULL THEN greatest(v_min, 0) END;  -- NULL: nothing queued
END $$;
