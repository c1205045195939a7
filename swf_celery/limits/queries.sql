-- Queries of flow control and idempotent publish (functions: sql/functions/limits.sql).

-- name: begin
-- Any statement begins a psycopg connection's implicit transaction.
SELECT 1;

-- name: claim
SELECT swf.idempotency_claim(%(scope)s, %(key)s, %(id)s, %(window)s);

-- name: hold_key
SELECT swf.hold_key(%(key)s, %(until)s, %(reason)s);

-- name: release_key
SELECT swf.release_key(%(key)s);

-- name: held_keys
SELECT key, held_until, held_reason, held_by FROM swf.flow_keys
 WHERE held_until > clock_timestamp()
 ORDER BY held_until, key;

-- name: flow_keys
-- Every key with state (a token bucket or a hold), with its queued and held deliveries per
-- limited queue (the console, the CLI).
SELECT k.key, k.tokens, k.refilled_at, k.held_until, k.held_reason
  FROM swf.flow_keys k
 ORDER BY k.key
 LIMIT %(limit)s;
