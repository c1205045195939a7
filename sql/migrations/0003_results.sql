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
