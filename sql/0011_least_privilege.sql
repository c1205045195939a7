-- 0011: least privilege. The functions that create or drop a queue's pgmq tables run as
-- their owner (the role that ran the migrations), so workers and clients need no CREATE on
-- any schema and own no table; `swf-celery grant ROLE --worker|--client|--operator` gives a
-- role exactly the table privileges its part needs (swf_celery/ops/grants.sql). Everyone
-- else may not call these three: EXECUTE is revoked from PUBLIC.
--
-- A fixed search_path (pg_temp last) keeps a caller's own objects out of them; their
-- bodies name every object with its schema.
ALTER FUNCTION swf.queue_ensure(text, bigint)
    SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp;
ALTER FUNCTION swf.queue_drop(text)
    SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp;
ALTER FUNCTION swf.queue_reap()
    SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp;
REVOKE EXECUTE ON FUNCTION swf.queue_ensure(text, bigint), swf.queue_drop(text),
    swf.queue_reap() FROM PUBLIC;

-- A revoke (swf.task_revoke, 0009) records the id and deletes the task's queued messages.
-- Any client may revoke a task (as with Celery on any broker), but a client may not delete
-- queued messages otherwise: the function runs as its owner, for those who are granted it.
ALTER FUNCTION swf.task_revoke(text[])
    SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp;
REVOKE EXECUTE ON FUNCTION swf.task_revoke(text[]) FROM PUBLIC;
