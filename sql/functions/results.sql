-- The Celery result backend's chords (tables: sql/migrations/0003_results.sql, 0010): chord
-- counters in PostgreSQL, so chords need no chord_unlock polling task.

-- Record one header part and, when it completes the header, claim the callback.
-- Returns ready = -1 when the chord already fired (a late copy of a header task).
CREATE OR REPLACE FUNCTION swf.chord_part_return(
    p_group_id text, p_task_id text, p_group_index integer, p_state text, p_payload bytea,
    p_token text, p_claim_seconds double precision, p_expires_seconds double precision
) RETURNS TABLE (ready integer, total integer, claimed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_done boolean;
    v_inserted integer;
BEGIN
    INSERT INTO swf.chords AS c (group_id) VALUES (p_group_id) ON CONFLICT (group_id) DO NOTHING;
    -- The row lock serialises the parts of one chord: exactly one sees the header complete.
    SELECT c.done INTO v_done FROM swf.chords c WHERE c.group_id = p_group_id FOR UPDATE;
    IF v_done THEN
        RETURN QUERY SELECT -1, 0, false;
        RETURN;
    END IF;
    INSERT INTO swf.chord_parts (group_id, task_id, group_index, state, payload)
    VALUES (p_group_id, p_task_id, p_group_index, p_state, p_payload)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    RETURN QUERY
    UPDATE swf.chords c SET
        ready = c.ready + v_inserted,
        claim_token = CASE WHEN c.size IS NOT NULL AND c.ready + v_inserted >= c.size + c.extra
                            AND (c.claimed_until IS NULL OR c.claimed_until < clock_timestamp())
                           THEN p_token ELSE c.claim_token END,
        claimed_until = CASE WHEN c.size IS NOT NULL AND c.ready + v_inserted >= c.size + c.extra
                              AND (c.claimed_until IS NULL OR c.claimed_until < clock_timestamp())
                             THEN clock_timestamp() + make_interval(secs => p_claim_seconds)
                             ELSE c.claimed_until END,
        expires_at = CASE WHEN p_expires_seconds > 0
                          THEN now() + make_interval(secs => p_expires_seconds) END
    WHERE c.group_id = p_group_id
    RETURNING c.ready, c.size + c.extra, c.claim_token IS NOT DISTINCT FROM p_token;
END
$$;

CREATE OR REPLACE FUNCTION swf.add_to_chord(p_group text, p_task text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO swf.chords (group_id, extra) VALUES (p_group, 0)
        ON CONFLICT (group_id) DO NOTHING;
    INSERT INTO swf.chord_additions (group_id, task_id) VALUES (p_group, p_task)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE swf.chords SET extra = extra + 1 WHERE group_id = p_group;
    RETURN true;
END $$;
