-- NOTIFY, one way: every NOTIFY the library sends (the broker's wake-ups, workflow events,
-- result wake-ups, channel messages, notify_only) goes through a function of this file.
--
-- PostgreSQL keeps NOTIFYs in one queue per server (max_notify_queue_pages, 8 GB by default)
-- that it trims only up to the slowest listener: a session that LISTENs and stops reading
-- (idle in a transaction, a hung process, a client that no longer reads its socket) holds it,
-- and once the queue is full every COMMIT that NOTIFYs fails. So a NOTIFY that is a hint (a
-- wake-up or an event: its reader falls back to a timed poll, or re-reads the tables) is
-- skipped while the queue is swf.notify_queue_limit() full or more: the commit goes on
-- without it, the skip is counted (sequence swf.notify_skips: listeners report a gap when it
-- moves, swf_celery.db.notification_health reports it) and told to the sending session as a
-- NOTICE with SQLSTATE 01SWF, which swf_celery's connections log as a warning. A NOTIFY the
-- caller asked for by name (notify_only) is refused instead (swf.notify_required).
--
-- What a NOTIFY carries: ids, names and states that every role granted a part may read in
-- the tables anyway (a run id, a step name, a status, a message id), never inputs, outputs
-- or message bodies. Any session that can connect may LISTEN to any channel and NOTIFY any
-- payload: a NOTIFY is a hint to re-read, never a fact (docs/messaging.md).
--
-- These functions run as their caller: anyone may NOTIFY anyway. The check reads the queue's
-- head and tail under a shared lock (pg_notification_queue_usage).

-- Fraction of the notification queue above which hints are skipped (PostgreSQL itself warns
-- from half full on).
CREATE OR REPLACE FUNCTION swf.notify_queue_limit() RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$ SELECT 0.5::double precision $$;

-- What a skipped or refused NOTIFY reports (the notice or error, and its hint).
CREATE OR REPLACE FUNCTION swf._notify_full_message(p_channel text, p_outcome text,
                                                    p_usage double precision)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('swf: NOTIFY %s %s: the notification queue is %s%% full',
                  p_channel, p_outcome, round((p_usage * 100)::numeric, 1))
$$;

CREATE OR REPLACE FUNCTION swf._notify_full_hint() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'a session that LISTENs has stopped reading (idle in transaction, or stuck); '
           'swf_celery.db.notification_health() names the likely ones'::text
$$;

-- NOTIFY p_channel with p_payload unless the queue is too full; true when sent.
CREATE OR REPLACE FUNCTION swf.notify_hint(p_channel text, p_payload text DEFAULT '')
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_usage double precision := pg_catalog.pg_notification_queue_usage();
BEGIN
    IF v_usage < swf.notify_queue_limit() THEN
        PERFORM pg_catalog.pg_notify(p_channel, p_payload);
        RETURN true;
    END IF;
    BEGIN
        PERFORM pg_catalog.nextval('swf.notify_skips');
    EXCEPTION WHEN insufficient_privilege OR read_only_sql_transaction THEN
        NULL;  -- uncounted (a role granted by hand, a read-only transaction), still skipped
    END;
    RAISE NOTICE USING ERRCODE = '01SWF',
        MESSAGE = swf._notify_full_message(p_channel, 'skipped', v_usage),
        HINT = swf._notify_full_hint();
    RETURN false;
END $$;

-- NOTIFY p_channel with p_payload, or raise program_limit_exceeded (54000, as PostgreSQL's
-- own "too many notifications") while the queue is too full: for a NOTIFY the caller asked
-- for by name, which a skip would silently lose.
CREATE OR REPLACE FUNCTION swf.notify_required(p_channel text, p_payload text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_usage double precision := pg_catalog.pg_notification_queue_usage();
BEGIN
    IF v_usage >= swf.notify_queue_limit() THEN
        RAISE EXCEPTION USING ERRCODE = '54000',
            MESSAGE = swf._notify_full_message(p_channel, 'refused', v_usage),
            HINT = swf._notify_full_hint();
    END IF;
    PERFORM pg_catalog.pg_notify(p_channel, p_payload);
END $$;

-- NOTIFYs skipped so far (0 before the first), for listeners and health reports.
CREATE OR REPLACE FUNCTION swf.notify_skipped() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM swf.notify_skips
$$;
