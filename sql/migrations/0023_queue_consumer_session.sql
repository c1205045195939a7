-- 0023: an expiring queue lives while its consumer's session does. The keeper of the worker
-- consuming a queue marks it every second (swf.queue_touch) and now names the backend of its
-- LISTEN session; swf.queue_reap removes an expired queue only once that session has ended,
-- as RabbitMQ expires only a queue that has no consumer. A worker stopped for longer than
-- its pidbox queue's expiry (SIGSTOP, a VM paused, a long GC) keeps the queue and the
-- broadcasts in it (a revoke sent meanwhile still reaches it). NULL: not known (keepers of
-- release 22, a pooler's session); the queue expires by its last mark alone, as before.
ALTER TABLE swf.queues ADD COLUMN IF NOT EXISTS consumer_pid integer;
COMMENT ON COLUMN swf.queues.consumer_pid IS
    'backend pid of the LISTEN session of the worker that last marked this expiring queue as '
    'consumed; the queue is not reaped while that session runs';
