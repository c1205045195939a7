-- 0022: messages handed over with their wake-up. A consumer asleep on a queue
-- (swf.queue_sleepers) that gives a claim time and a key accepts the message its wake-up is
-- for: the producer's wake-up trigger claims it for the consumer, as a read does, and sends
-- it in the NOTIFY, signed with the consumer's key (swf._queue_hand_over), so that a NOTIFY
-- forged on the consumer's channel is never taken for a message; the consumer's visibility
-- keeper then extends the claim. NULL: the consumer is only woken and reads, as consumers of
-- release 21 are. Read and written only through the functions (the key stays there).
ALTER TABLE swf.queue_sleepers
    ADD COLUMN IF NOT EXISTS claim_ms integer CHECK (claim_ms > 0),
    ADD COLUMN IF NOT EXISTS hand_over_key text CHECK (hand_over_key ~ '^[0-9a-f]{32}$');
COMMENT ON COLUMN swf.queue_sleepers.claim_ms IS
    'milliseconds a message handed over with the wake-up stays claimed for this consumer; '
    'NULL: woken only';
COMMENT ON COLUMN swf.queue_sleepers.hand_over_key IS
    'the consumer''s secret that signs a message handed over to it';
