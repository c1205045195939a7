-- 0021: one consumer woken per message. A consumer that waits on a queue in an event loop
-- (a Celery worker) puts itself to sleep on it here, with its own NOTIFY channel and the
-- backend pid of its LISTEN session; a message committed to the queue wakes the consumer
-- first in line whose session still runs, on that consumer's channel, instead of every
-- listener of the queue (a thundering herd that had every idle host read and arm again for
-- each message). swf.queue_waiters stays for consumers that arm with swf.queue_arm. Read
-- and written only through the functions of sql/functions/queues.sql.

-- A woken consumer goes to the back of the line (since = now): one update per message while
-- consumers sleep, kept HOT (since is not indexed; a queue has as many rows as consumers,
-- sorted when read) so that its old versions are pruned without waiting for a vacuum.
CREATE UNLOGGED TABLE IF NOT EXISTS swf.queue_sleepers (
    queue_id integer NOT NULL REFERENCES swf.queues (id) ON DELETE CASCADE,
    channel  text NOT NULL CHECK (channel ~ '^swfw_[0-9a-f]{16}$'),
    pid      integer NOT NULL,
    since    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (queue_id, channel)
) WITH (fillfactor = 50);
COMMENT ON TABLE swf.queue_sleepers IS
    'consumers asleep on a queue: woken one per message, on their own channel';
