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

-- name: key_stats
SELECT queue, key, queued, held, rate, concurrency, held_until, held_reason, tokens
  FROM swf.flow_key_stats(%(limit)s);
