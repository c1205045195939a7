-- 0005: messaging channels. Each channel's messages live in a pgmq queue; this table
-- records which channel owns which queue, so that a queue name computed for one channel
-- (see swf_celery/messaging/channels.py) is never silently shared with another channel or with a
-- pgmq queue created for something else (a Celery queue, say).
CREATE TABLE swf.channels (
    channel    text PRIMARY KEY,
    queue_name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE swf.channels IS
    'swf-celery messaging: the pgmq queue that stores each channel''s messages';
