-- The Celery result backend's chords (tables: sql/migrations/0003_results.sql, 0010): chord
-- counters in PostgreSQL, so chords need no chord_unlock polling task.

-- Record one header part and, when it completes the header, claim the callback.
-- ready = -1: the chord already fired, or its expiry was already reported (a late copy of a
-- header task); -2: the chord expired with its header incomplete (swf.expire_chords) and
-- this part is the first to hear of it: the caller fails the chord (total and claimed then
-- say how many parts had returned and whether the size was known); -3: there is no record
-- of the chord (it finished or expired longer ago than its marker is kept): nothing is
-- recorded. A part never creates the chord's row: swf.chords gets it from apply_chord, before
-- the header is sent, so a row created here would have no size and never fire.
CREATE OR REPLACE FUNCTION swf.chord_part_return(
    p_group_id text, p_task_id text, p_group_index integer, p_state text, p_payload bytea,
    p_token text, p_claim_seconds double precision, p_expires_seconds double precision
) RETURNS TABLE (ready integer, total integer, claimed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_chord swf.chords;
    v_inserted integer;
BEGIN
    -- The row lock serialises the parts of one chord: exactly one sees the header complete.
    SELECT * INTO v_chord FROM swf.chords c WHERE c.group_id = p_group_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT -3, 0, false;
        RETURN;
    END IF;
    IF v_chord.expired_at IS NOT NULL THEN
        -- The token recognises a retry (its reply lost) of the part that reported it.
        IF v_chord.done AND v_chord.claim_token IS DISTINCT FROM p_token THEN
            RETURN QUERY SELECT -1, 0, false;
            RETURN;
        END IF;
        UPDATE swf.chords c SET done = true, claim_token = p_token WHERE c.group_id = p_group_id;
        RETURN QUERY SELECT -2, v_chord.ready, v_chord.size IS NOT NULL;
        RETURN;
    END IF;
    IF v_chord.done THEN
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

-- Count a task added to a running chord (Task.add_to_chord) once per task id. A chord with
-- no row, or one that finished or expired, is left alone (false).
CREATE OR REPLACE FUNCTION swf.add_to_chord(p_group text, p_task text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM swf.chords
     WHERE group_id = p_group AND NOT done AND expired_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO swf.chord_additions (group_id, task_id) VALUES (p_group, p_task)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE swf.chords SET extra = extra + 1 WHERE group_id = p_group;
    RETURN true;
END $$;

-- Chords past their expiry (expires_at, or, given p_before, those stored without an expiry
-- before it), at most p_limit of them; returns how many. A chord that finished (its done
-- marker) or whose expiry marker expired in turn is deleted. A chord still collecting its
-- header keeps its row as a marker (expired_at; parts and header deleted) for as long again
-- as it was kept, at least an hour: a header part that arrives later fails the chord
-- (swf.chord_part_return) instead of waiting forever. Runs as its caller: the result
-- backend's cleanup (a worker) and retention (an operator) both call it.
CREATE OR REPLACE FUNCTION swf.expire_chords(p_limit integer, p_before timestamptz DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    WITH due AS (
        SELECT c.group_id, c.done OR c.expired_at IS NOT NULL AS finished,
               greatest(coalesce(c.expires_at, now()) - c.created_at, interval '1 hour') AS kept
          FROM swf.chords c
         WHERE c.expires_at < now() OR (c.expires_at IS NULL AND c.created_at < p_before)
         ORDER BY c.expires_at NULLS LAST
         LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), deleted AS (
        DELETE FROM swf.chords c USING due d WHERE c.group_id = d.group_id AND d.finished
        RETURNING c.group_id
    ), marked AS (
        UPDATE swf.chords c SET expired_at = now(), expires_at = now() + d.kept, header = NULL,
                                claim_token = NULL, claimed_until = NULL
          FROM due d WHERE c.group_id = d.group_id AND NOT d.finished
        RETURNING c.group_id
    ), parts AS (
        DELETE FROM swf.chord_parts p USING marked m WHERE p.group_id = m.group_id
    )
    SELECT (SELECT count(*) FROM deleted) + (SELECT count(*) FROM marked) INTO n;
    RETURN n;
END $$;
