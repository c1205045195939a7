-- Queries of the swf:// transport. Queue names are always parameters; the SQL functions
-- (sql/functions/queues.sql) look up the pgmq table names in swf.queues.

-- name: ensure
SELECT pgmq_name, storage, limited FROM swf.queue_ensure(%(queue)s, %(expires_ms)s);

-- name: has_queue
SELECT EXISTS (SELECT 1 FROM swf.queues WHERE name = %(queue)s);

-- name: fanout
SELECT swf.queue_fanout(%(exchange)s, %(message)s);

-- name: fanout_revoke
SELECT swf.queue_fanout(%(exchange)s, %(message)s), swf.task_revoke(%(task_ids)s);

-- name: fanout_revoke_stamped
SELECT swf.queue_fanout(%(exchange)s, %(message)s), swf.task_revoke_stamped(%(headers)s);

-- name: ack
-- Each id with its delivery's receipt (read_ct): a stale delivery is left alone.
SELECT swf.queue_ack(%(queue)s, %(ids)s, %(archive)s, %(receipts)s);

-- name: reject
SELECT swf.queue_reject(%(queue)s, %(ids)s, %(requeue)s, %(reason)s, %(receipts)s);

-- name: extend
SELECT swf.queue_extend(%(queues)s, %(ids)s, %(vt)s, %(receipts)s);

-- name: size
SELECT swf.queue_size(%(queue)s);

-- name: purge
SELECT swf.queue_purge(%(queue)s);

-- name: drop
SELECT swf.queue_drop(%(queue)s);

-- name: reap
SELECT swf.queue_reap();

-- name: bind
SELECT swf.queue_bind(%(exchange)s, %(routing_key)s, %(pattern)s, %(queue)s);

-- name: unbind
SELECT swf.queue_unbind(%(exchange)s, %(routing_key)s, %(queue)s);

-- name: bindings
SELECT routing_key, pattern, queue FROM swf.queue_bindings WHERE exchange = %(exchange)s
 ORDER BY queue, routing_key;

-- name: arm
SELECT swf.queue_arm(%(queues)s);

-- name: hold_sleeper
-- Run by a consumer's LISTEN session at its connect: the lock that says it lives
-- (swf._sleeper_alive), held until the session ends. Another session holding it (only
-- that session's pid reused, or a hostile one) leaves it untaken: the liveness check then
-- reads the backend status instead.
SELECT pg_try_advisory_lock(swf._sleeper_lock_space(), pg_backend_pid());

-- name: sleep
SELECT swf.queue_sleep(%(queues)s, %(channel)s, %(pid)s, %(claim_ms)s, %(key)s);

-- name: give_back
SELECT swf.queue_pass_wake(%(channel)s, %(sleeper)s, %(msg_id)s, %(receipt)s);

-- name: pass_wake
SELECT swf.queue_pass_wake(%(channel)s, %(sleeper)s);

-- name: wake_up
SELECT swf.queue_wake_up(%(queues)s, %(sleeper)s);

-- name: session
SELECT set_config('synchronous_commit', 'off', false);

-- name: touch
-- Returns the queues still there: a consumed queue missing here expired meanwhile. pid: the
-- backend of the transport's LISTEN session (NULL without one): the expiring queues are not
-- reaped while it runs.
SELECT swf.queue_touch(%(queues)s, %(pid)s);

-- == Flow control (sql/functions/limits.sql; the read: sql/functions/queues.sql).

-- name: read_limited
-- As storage.sql's read, for a queue whose messages carry flow keys.
SELECT msg_id, read_ct, message, priority
  FROM swf.queue_read_limited(%(queue)s, %(qty)s, %(vt)s, %(acks)s, %(receipts)s);

-- name: mark_limited
SELECT swf.queue_mark_limited(%(queue)s);

-- name: limited
SELECT swf.queue_limited(%(queues)s);

-- name: claim
SELECT swf.idempotency_claim(%(scope)s, %(key)s, %(id)s, %(window)s);
