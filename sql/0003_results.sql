-- 0003: the Celery result backend (swf_celery/results/backend.py).
--
-- task_results holds one row per task: the encoded result meta exactly as Celery's
-- serializer wrote it (JSON by default) plus a few columns copied out of it so that
-- results can be queried with SQL. NOTIFY on channel swf_results carries task ids only.

CREATE TABLE swf.task_results (
    task_id     text PRIMARY KEY,
    status      text NOT NULL,
    payload     bytea NOT NULL,
    name        text,
    worker      text,
    queue       text,
    retries     integer,
    group_id    text,
    parent_id   text,
    date_done   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
COMMENT ON TABLE swf.task_results IS 'Celery task results (result_backend = swf://...)';
CREATE INDEX task_results_expires_at ON swf.task_results (expires_at)
    WHERE expires_at IS NOT NULL;

CREATE TABLE swf.group_results (
    group_id    text PRIMARY KEY,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX group_results_expires_at ON swf.group_results (expires_at)
    WHERE expires_at IS NOT NULL;

-- One row per chord (keyed by the header's group id). ready counts distinct header parts
-- returned; the callback fires when ready reaches size + extra (extra: add_to_chord).
-- claim_token/claimed_until: the worker that completed the header owns the callback for
-- a lease, so a crashed claimer's redelivered part can take over. done: the callback was
-- applied; later copies of header tasks are ignored.
CREATE TABLE swf.chords (
    group_id       text PRIMARY KEY,
    size           integer,
    extra          integer NOT NULL DEFAULT 0,
    ready          integer NOT NULL DEFAULT 0,
    header         bytea,
    claim_token    text,
    claimed_until  timestamptz,
    done           boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz
);
CREATE INDEX chords_expires_at ON swf.chords (expires_at) WHERE expires_at IS NOT NULL;

-- The encoded [task_id, state, result] of each header part, ordered by group_index then
-- arrival. A header task that runs twice (redelivery) counts once.
CREATE TABLE swf.chord_parts (
    group_id     text NOT NULL REFERENCES swf.chords (group_id) ON DELETE CASCADE,
    task_id      text NOT NULL,
    group_index  integer NOT NULL,
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    state        text NOT NULL,
    payload      bytea NOT NULL,
    PRIMARY KEY (group_id, task_id, group_index)
);

-- Record one header part and, when it completes the header, claim the callback.
-- Returns ready = -1 when the chord already fired (a late copy of a header task).
CREATE FUNCTION swf.chord_part_return(
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
