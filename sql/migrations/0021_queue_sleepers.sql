-- 0021: one consumer woken per message. A consumer that waits on a queue in an event loop
-- (a Celery worker) puts itself to sleep on it here, with its own NOTIFY channel and the
-- backend pid of its LISTEN session; a message committed to the queue wakes the consumer
-- asleep longest whose session still runs, on that consumer's channel, instead of every
-- listener of the queue (a thundering herd that had every idle host read and arm again for
-- each message). swf.queue_waiters stays for consumers that arm with swf.queue_arm. Read
-- and written only through the functions of sql/functions/queues.sql.

CREATE UNLOGGED TABLE IF NOT EXISTS swf.queue_sleepers (
    queue_id integer NOT NULL REFERENCES swf.queues (id) ON DELETE CASCADE,
    channel  text NOT NULL CHECK (channel ~ '^swfw_[0-9a-f]{16}$'),
    pid      integer NOT NULL,
    since    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (queue_id, channel)
);
CREATE INDEX IF NOT EXISTS queue_sleepers_order ON swf.queue_sleepers (queue_id, since);
COMMENT ON TABLE swf.queue_sleepers IS
    'consumers asleep on a queue: woken one per message, on their own channel';
