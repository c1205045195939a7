-- What `swf-celery doctor` reads of the broker's queues (swf_celery/ops/doctor_runs.py and
-- doctor_health.py). Each durable queue has a table of its own (swf._queue_storage names
-- it), so these read them in a loop. They run as their caller (no SECURITY DEFINER): a role
-- that may not read a queue's messages gets permission denied, and only the operator reads
-- them all. Read-only; nothing here locks a message.

-- Each durable queue's messages by state: visible now (and since when the oldest one
-- waits), delayed (an ETA, a countdown or a retry's backoff, never delivered), held (a
-- consumer has it: delivered, invisible until its visibility timeout) and when a consumer
-- last marked the queue as consumed (every minute while one consumes it).
CREATE OR REPLACE FUNCTION swf.doctor_queues()
RETURNS TABLE (queue text, visible bigint, oldest_visible timestamptz, delayed bigint,
               held bigint, last_active timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    q swf.queues;
    s record;
BEGIN
    FOR q IN SELECT * FROM swf.queues WHERE storage = 'pgmq' ORDER BY name LOOP
        SELECT * INTO s FROM swf._queue_storage(q);
        queue := q.name;
        last_active := q.last_active;
        EXECUTE format(
            'SELECT count(*) FILTER (WHERE m.vt <= clock_timestamp()), '
            '       min(m.enqueued_at) FILTER (WHERE m.vt <= clock_timestamp()), '
            '       count(*) FILTER (WHERE m.vt > clock_timestamp() AND m.read_ct = 0), '
            '       count(*) FILTER (WHERE m.vt > clock_timestamp() AND m.read_ct > 0) '
            '  FROM %s m WHERE %s', s.tbl, s.filter)
          INTO visible, oldest_visible, delayed, held;
        RETURN NEXT;
    END LOOP;
END $$;

-- Messages consumers hold now (delivered, invisible until vt), oldest delivery first, at
-- most p_limit: the Celery task id and name each carries and when it was delivered.
CREATE OR REPLACE FUNCTION swf.doctor_held_messages(p_limit integer)
RETURNS TABLE (queue text, msg_id bigint, read_ct integer, vt timestamptz,
               last_read_at timestamptz, task_id text, task_name text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    q swf.queues;
    s record;
BEGIN
    FOR q IN SELECT * FROM swf.queues WHERE storage = 'pgmq' ORDER BY name LOOP
        SELECT * INTO s FROM swf._queue_storage(q);
        RETURN QUERY EXECUTE format(
            'SELECT $1, m.msg_id, m.read_ct, m.vt, m.last_read_at, '
            '       m.message #>> ''{headers,id}'', '
            '       coalesce(m.message #>> ''{headers,shadow}'', m.message #>> ''{headers,task}'') '
            '  FROM %s m WHERE %s AND m.read_ct > 0 AND m.vt > clock_timestamp() '
            ' ORDER BY m.last_read_at LIMIT $2', s.tbl, s.filter) USING q.name, p_limit;
    END LOOP;
END $$;

-- The messages p_ids of queue p_queue as they are now (those gone are not returned).
CREATE OR REPLACE FUNCTION swf.doctor_messages(p_queue text, p_ids bigint[])
RETURNS TABLE (msg_id bigint, read_ct integer, vt timestamptz, enqueued_at timestamptz,
               last_read_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    q swf.queues := swf._queue_get(p_queue);
    s record;
BEGIN
    IF q.id IS NULL THEN
        RETURN;
    END IF;
    SELECT * INTO s FROM swf._queue_storage(q);
    RETURN QUERY EXECUTE format(
        'SELECT m.msg_id, m.read_ct, m.vt, m.enqueued_at, m.last_read_at '
        '  FROM %s m WHERE %s AND m.msg_id = ANY ($1)', s.tbl, s.filter) USING p_ids;
END $$;
