-- 0022: messages handed over with their wake-up. A consumer asleep on a queue
-- (swf.queue_sleepers) that gives a claim time accepts the message its wake-up is for: the
-- producer's wake-up trigger claims it for the consumer, as a read does, and sends it in the
-- NOTIFY (swf._queue_hand_over); the consumer's visibility keeper then extends the claim.
-- NULL: the consumer is only woken and reads, as consumers of release 21 are.
ALTER TABLE swf.queue_sleepers ADD COLUMN IF NOT EXISTS claim_ms integer
    CHECK (claim_ms > 0);
COMMENT ON COLUMN swf.queue_sleepers.claim_ms IS
    'milliseconds a message handed over with the wake-up stays claimed for this consumer; '
    'NULL: woken only';
