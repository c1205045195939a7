-- Messaging channels (table: sql/migrations/0005_messaging.sql). Each channel's messages
-- live in a pgmq queue; swf.channels records which channel owns which queue, so that a queue
-- name computed for one channel (swf_celery/messaging/channels.py) is never silently shared
-- with another channel or with a pgmq queue created for something else.

-- Create the channel's queue on first use, or check that an existing queue is ours.
-- Idempotent and safe to call concurrently (an advisory lock per queue serialises it). It
-- runs as its owner (creating a queue is DDL) and gives every role granted a part the
-- channel's tables (listening reads them, acknowledging deletes from them).
CREATE OR REPLACE FUNCTION swf.ensure_channel(p_channel text, p_queue text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_owner text;
BEGIN
    PERFORM swf._require_part('create a channel', 'client', 'worker');
    PERFORM pg_advisory_xact_lock(hashtext('swf-celery:channel'), hashtext(p_queue));
    SELECT channel INTO v_owner FROM swf.channels WHERE queue_name = p_queue;
    IF v_owner IS NULL THEN
        IF EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = p_queue) THEN
            RAISE EXCEPTION 'pgmq queue % exists but does not belong to channel %; '
                            'rename the channel or drop that queue', p_queue, p_channel;
        END IF;
        PERFORM pgmq.create(p_queue);
        INSERT INTO swf.channels (channel, queue_name) VALUES (p_channel, p_queue);
        PERFORM swf._grant_channel(p_queue, NULL);
    ELSIF v_owner <> p_channel THEN
        RAISE EXCEPTION 'channel % maps to pgmq queue %, which already belongs to channel %; '
                        'choose a name that differs within its first 29 characters',
                        p_channel, p_queue, v_owner;
    ELSIF NOT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = p_queue) THEN
        -- the queue was dropped by hand: recreate it rather than fail every send
        PERFORM pgmq.create(p_queue);
        PERFORM swf._grant_channel(p_queue, NULL);
    END IF;
END;
$$;
REVOKE EXECUTE ON FUNCTION swf.ensure_channel(text, text) FROM PUBLIC;
COMMENT ON FUNCTION swf.ensure_channel(text, text) IS
    'swf-celery messaging: create a channel''s pgmq queue or verify that it owns it';
