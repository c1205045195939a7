-- 0002: the broker's tables (kombu transport ``swf://`` over pgmq). Every kombu queue name
-- maps to a safe pgmq queue name kept in swf.queues; bindings (exchange -> queue) live in
-- swf.queue_bindings so that fanout and topic routing work across processes;
-- swf.queue_waiters marks the queues an idle consumer waits on. The functions that use them
-- are in sql/functions/queues.sql.

CREATE TABLE swf.queues (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,          -- the kombu queue name, verbatim
    pgmq_name   text NOT NULL UNIQUE,          -- sanitised prefix + hash, <= 47 chars
    expires_ms  bigint,                        -- x-expires: dropped when unused this long
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_active timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE swf.queues IS 'kombu queue name -> pgmq queue name (swf:// broker)';

CREATE UNLOGGED TABLE swf.queue_waiters (
    queue_id integer PRIMARY KEY REFERENCES swf.queues (id) ON DELETE CASCADE,
    waiting  boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE swf.queue_waiters IS 'queues an idle consumer waits on (wake-up coalescing)';

CREATE TABLE swf.queue_bindings (
    exchange    text NOT NULL,
    routing_key text NOT NULL,
    pattern     text,
    queue       text NOT NULL REFERENCES swf.queues (name) ON DELETE CASCADE,
    PRIMARY KEY (exchange, queue, routing_key)
);
CREATE INDEX queue_bindings_queue_idx ON swf.queue_bindings (queue);
COMMENT ON TABLE swf.queue_bindings IS 'exchange bindings of the swf:// broker (all processes)';
