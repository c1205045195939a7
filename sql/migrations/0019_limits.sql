-- 0019: flow control at delivery (sql/functions/limits.sql, and the limited read of
-- sql/functions/queues.sql) and idempotent publish.
--
-- swf.flow_keys: the state of a flow key, the name a message carries in its pgmq headers
-- ("flow": {"key", "rate", "burst", "concurrency"}, from the publisher): its token bucket
-- (rate limits) and its hold (paused until a time). A key has a row once it was rate
-- limited or held; its limits travel with its messages, so workers need no setting.
CREATE TABLE swf.flow_keys (
    key          text PRIMARY KEY CHECK (octet_length(key) BETWEEN 1 AND 255),
    -- Tokens left at refilled_at (NULL: a full bucket).
    tokens       double precision,
    refilled_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    held_until   timestamptz,
    held_reason  text,
    held_by      text
);
CREATE INDEX flow_keys_held_idx ON swf.flow_keys (held_until) WHERE held_until IS NOT NULL;

-- A queue whose messages may carry flow keys is read through swf.queue_read_limited; the
-- others keep the plain read (transport/storage.sql) and pay nothing.
ALTER TABLE swf.queues ADD COLUMN limited boolean NOT NULL DEFAULT false;

-- Where the last limited read of a queue stopped among its keys: the next read starts after
-- it (round-robin: a key with a long backlog does not hold back the others).
CREATE TABLE swf.flow_turns (
    queue_id  integer PRIMARY KEY REFERENCES swf.queues (id) ON DELETE CASCADE,
    last_key  text NOT NULL
);

-- Idempotent publish: one task (scope 'task') or one workflow run (scope 'run') per key
-- until expires_at; a second publish within the window gets the first one's id.
CREATE TABLE swf.idempotency_keys (
    scope       text NOT NULL CHECK (scope IN ('task', 'run')),
    key         text NOT NULL CHECK (octet_length(key) BETWEEN 1 AND 512),
    id          text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_expiry_idx ON swf.idempotency_keys (expires_at);

-- Every role granted a part reads the keys and their holds (the console, the CLI); they
-- change only through the functions.
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT r.role FROM swf.roles r
                   WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.role) LOOP
        EXECUTE format('GRANT SELECT ON swf.flow_keys TO %I', v_role);
    END LOOP;
END $$;
