-- 0013: a queue's storage is a column, written once when the queue is created; dead letters
-- have one store, whatever the queue's storage.
--
-- * swf.queues.storage: 'pgmq' (a durable queue: its own pgmq table) or 'transient' (rows of
--   swf.transient_messages), taken from the pgmq name's prefix that used to encode it.
-- * swf.dead_letters: every dead-lettered message (rejected without requeue, delivered too
--   often, malformed), with its queue and reason. The broker writes it; the workflow engine
--   reacts to it through a trigger it installs (sql/functions/workflows.sql). Dead letters
--   kept so far in the pgmq archives and swf.transient_archive (rows whose headers carry
--   "dead_letter") move here; the archives keep only archive_acked copies.

ALTER TABLE swf.queues ADD COLUMN storage text;
UPDATE swf.queues SET storage = CASE WHEN left(pgmq_name, 2) = 't_' THEN 'transient' ELSE 'pgmq' END;
ALTER TABLE swf.queues ALTER COLUMN storage SET NOT NULL,
    ADD CONSTRAINT queues_storage_check CHECK (storage IN ('pgmq', 'transient'));
COMMENT ON COLUMN swf.queues.storage IS
    'pgmq: own table pgmq.q_<pgmq_name>; transient: rows of swf.transient_messages';

CREATE TABLE swf.dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue       text NOT NULL,              -- the kombu queue name (outlives its queue)
    msg_id      bigint NOT NULL,            -- the message's id in its queue
    read_ct     integer NOT NULL,
    enqueued_at timestamptz NOT NULL,
    dead_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    reason      text NOT NULL,
    message     jsonb NOT NULL,
    headers     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX dead_letters_queue ON swf.dead_letters (queue, msg_id);
CREATE INDEX dead_letters_dead_at ON swf.dead_letters (dead_at);
COMMENT ON TABLE swf.dead_letters IS 'dead-lettered broker messages, with their queue and reason';

DO $$
DECLARE
    v_name text;
    v_pgmq text;
BEGIN
    FOR v_name, v_pgmq IN SELECT name, pgmq_name FROM swf.queues WHERE storage = 'pgmq' ORDER BY id LOOP
        CONTINUE WHEN to_regclass(format('pgmq.%I', 'a_' || v_pgmq)) IS NULL;
        EXECUTE format(
            'WITH gone AS (DELETE FROM pgmq.%I WHERE headers ? ''dead_letter'' '
            '  RETURNING msg_id, read_ct, enqueued_at, archived_at, message, headers) '
            'INSERT INTO swf.dead_letters (queue, msg_id, read_ct, enqueued_at, dead_at, reason, '
            '                              message, headers) '
            'SELECT $1, msg_id, read_ct, enqueued_at, archived_at, headers ->> ''dead_letter'', '
            '       message, headers - ''dead_letter'' FROM gone ORDER BY msg_id',
            'a_' || v_pgmq) USING v_name;
    END LOOP;
END $$;
WITH gone AS (
    DELETE FROM swf.transient_archive WHERE headers ? 'dead_letter'
    RETURNING queue, msg_id, read_ct, enqueued_at, archived_at, message, headers)
INSERT INTO swf.dead_letters (queue, msg_id, read_ct, enqueued_at, dead_at, reason, message,
                              headers)
SELECT queue, msg_id, read_ct, enqueued_at, archived_at, headers ->> 'dead_letter', message,
       headers - 'dead_letter'
  FROM gone ORDER BY msg_id;
