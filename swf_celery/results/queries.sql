-- Queries of the result backend (swf_celery/results/backend.py). Tables: sql/migrations/0003_results.sql;
-- functions: sql/functions/results.sql.

-- name: store_result
-- Upsert a task's result and NOTIFY its own channel in one statement. A stored SUCCESS is
-- never overwritten (a redelivered copy of a finished task must not turn it back to STARTED).
-- The channel is 'swfr_' and 40 hex digits of the task id's SHA-256 (consumer.py
-- result_channel): only processes waiting for this result are woken; no payload. A hint
-- (swf.notify_hint): skipped while the notification queue is too full (waiters re-read).
WITH stored AS (
    INSERT INTO swf.task_results AS r (task_id, status, payload, name, worker, queue,
                                       retries, group_id, parent_id, date_done, expires_at)
    VALUES (%(task_id)s, %(status)s, %(payload)s, %(name)s, %(worker)s, %(queue)s,
            %(retries)s, %(group_id)s, %(parent_id)s,
            CASE WHEN %(ready)s THEN now() END,
            CASE WHEN %(expires)s::float8 > 0
                 THEN now() + make_interval(secs => %(expires)s::float8) END)
    ON CONFLICT (task_id) DO UPDATE SET
        status = excluded.status, payload = excluded.payload, name = excluded.name,
        worker = excluded.worker, queue = excluded.queue, retries = excluded.retries,
        group_id = excluded.group_id, parent_id = excluded.parent_id,
        date_done = excluded.date_done, updated_at = now(), expires_at = excluded.expires_at
    WHERE r.status <> 'SUCCESS'
    RETURNING r.task_id
)
-- set_config: the synchronous_commit option for this transaction only, in this same
-- statement (no extra round trip).
SELECT swf.notify_hint('swfr_' || left(encode(sha256(convert_to(task_id, 'UTF8')), 'hex'), 40))
FROM stored, set_config('synchronous_commit', %(synchronous_commit)s, true);

-- name: get_result
SELECT payload FROM swf.task_results WHERE task_id = %(task_id)s;

-- name: get_results
SELECT task_id, payload FROM swf.task_results WHERE task_id = ANY(%(task_ids)s);

-- name: forget_result
DELETE FROM swf.task_results WHERE task_id = %(task_id)s;

-- name: save_group
INSERT INTO swf.group_results AS g (group_id, payload, expires_at)
VALUES (%(group_id)s, %(payload)s,
        CASE WHEN %(expires)s::float8 > 0
             THEN now() + make_interval(secs => %(expires)s::float8) END)
ON CONFLICT (group_id) DO UPDATE SET
    payload = excluded.payload, created_at = now(), expires_at = excluded.expires_at;

-- name: restore_group
SELECT payload FROM swf.group_results WHERE group_id = %(group_id)s;

-- name: delete_group
DELETE FROM swf.group_results WHERE group_id = %(group_id)s;

-- name: apply_chord
-- A chord (re)starts: a frozen chord applied again reuses its group id, so reset it.
WITH reset AS (
    INSERT INTO swf.chords AS c (group_id, header, expires_at)
    VALUES (%(group_id)s, %(header)s,
            CASE WHEN %(expires)s::float8 > 0
                 THEN now() + make_interval(secs => %(expires)s::float8) END)
    ON CONFLICT (group_id) DO UPDATE SET
        size = NULL, extra = 0, ready = 0, header = excluded.header, claim_token = NULL,
        claimed_until = NULL, done = false, created_at = now(),
        expires_at = excluded.expires_at
    RETURNING group_id
)
DELETE FROM swf.chord_parts p USING reset r WHERE p.group_id = r.group_id;

-- name: set_chord_size
INSERT INTO swf.chords AS c (group_id, size) VALUES (%(group_id)s, %(size)s)
ON CONFLICT (group_id) DO UPDATE SET size = excluded.size;

-- name: add_to_chord
-- Counted once per added task (swf.add_to_chord): a retry after a lost reply
-- does not count the part twice.
SELECT swf.add_to_chord(%(group_id)s, %(task_id)s);

-- name: chord_part_return
SELECT ready, total, claimed
FROM set_config('synchronous_commit', %(synchronous_commit)s, true),
     swf.chord_part_return(%(group_id)s, %(task_id)s, %(group_index)s, %(state)s,
                           %(payload)s, %(token)s, %(claim_seconds)s, %(expires)s);

-- name: chord_header
SELECT header FROM swf.chords WHERE group_id = %(group_id)s;

-- name: chord_parts
SELECT payload FROM swf.chord_parts WHERE group_id = %(group_id)s
ORDER BY group_index, seq;

-- name: finish_chord
-- The callback was applied (or the chord failed): drop the parts, keep a done marker
-- until it expires so a late copy of a header task cannot fire the callback again.
WITH finished AS (
    UPDATE swf.chords SET done = true, header = NULL, claim_token = NULL,
        claimed_until = NULL,
        expires_at = now() + make_interval(secs => %(done_seconds)s::float8)
    WHERE group_id = %(group_id)s AND claim_token = %(token)s
    RETURNING group_id
)
DELETE FROM swf.chord_parts p USING finished f WHERE p.group_id = f.group_id;

-- name: cleanup_results
-- Bulk delete of expired results, in batches so no single statement holds locks long.
WITH doomed AS (
    SELECT task_id FROM swf.task_results
    WHERE expires_at < now() ORDER BY expires_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED
)
DELETE FROM swf.task_results r USING doomed d WHERE r.task_id = d.task_id;

-- name: cleanup_groups
WITH doomed AS (
    SELECT group_id FROM swf.group_results
    WHERE expires_at < now() ORDER BY expires_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED
)
DELETE FROM swf.group_results g USING doomed d WHERE g.group_id = d.group_id;

-- name: cleanup_chords
-- Finished chords go; a chord still collecting its header keeps a marker (swf.expire_chords).
SELECT swf.expire_chords(%(batch)s);
