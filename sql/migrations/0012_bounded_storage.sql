-- 0012: bounded storage. Transient queues (x-expires / auto_delete: Celery's pidbox, reply
-- and event queues) keep their messages in ONE shared table, swf.transient_messages, keyed by
-- queue name, and their archived copies in swf.transient_archive, so that declaring or
-- expiring one is DML, never DDL. Durable queues' tables get indexes on task id and root id;
-- finished runs an index for retention. The functions are in sql/functions/queues.sql and
-- retention.sql.

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

-- Existing durable queues get the task id / root id indexes too (the same indexes
-- swf._queue_indexes gives a new queue; written out here because a migration runs before the
-- functions of its release are installed).
DO $$
DECLARE
    v_pgmq text;
BEGIN
    FOR v_pgmq IN SELECT pgmq_name FROM swf.queues WHERE left(pgmq_name, 2) = 'k_' LOOP
        IF to_regclass(format('pgmq.%I', 'q_' || v_pgmq)) IS NOT NULL THEN
            EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgmq.%I ((headers ->> ''task_id''))',
                           'q_' || v_pgmq || '_task_idx', 'q_' || v_pgmq);
            EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgmq.%I ((headers ->> ''root_id''))',
                           'q_' || v_pgmq || '_root_idx', 'q_' || v_pgmq);
        END IF;
    END LOOP;
END $$;

CREATE INDEX runs_finished_retention ON swf.runs ((coalesce(finished_at, updated_at)))
    WHERE status IN ('completed', 'failed', 'cancelled');
