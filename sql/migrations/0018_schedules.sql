-- 0018: the beat schedule in PostgreSQL (swf_celery.schedules). One row per entry, one row
-- per tick that fired. A tick is recorded in the transaction that publishes its message (the
-- broker is this database), and (schedule_id, tick_at) is unique: a tick fires once however
-- many beat processes run. Rows change only through sql/functions/schedules.sql.

CREATE TABLE swf.schedules (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    -- What a tick starts: a Celery task by name, or a workflow run (an import path).
    task            text,
    workflow        text,
    args            jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(args) = 'array'),
    kwargs          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(kwargs) = 'object'),
    options         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(options) = 'object'),
    -- The Celery schedule, serialised (swf_celery/schedules/codec.py): crontab, interval, solar.
    schedule        jsonb NOT NULL CHECK (jsonb_typeof(schedule) = 'object'),
    -- Ticks missed while no beat ran: 'once' (Celery's default), 'all' up to max_missed, 'skip'.
    missed          text NOT NULL DEFAULT 'once' CHECK (missed IN ('once', 'all', 'skip')),
    max_missed      integer NOT NULL DEFAULT 100 CHECK (max_missed BETWEEN 1 AND 10000),
    -- A workflow entry: skip a tick while the previous run is still in progress.
    skip_if_running boolean NOT NULL DEFAULT false,
    paused          boolean NOT NULL DEFAULT false,
    source          text NOT NULL DEFAULT 'api' CHECK (source IN ('config', 'api', 'import')),
    next_run_at     timestamptz NOT NULL,
    last_run_at     timestamptz,
    total_run_count bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((task IS NULL) <> (workflow IS NULL))
);
-- The beat's due query: entries not paused, by next run.
CREATE INDEX schedules_due ON swf.schedules (next_run_at) WHERE NOT paused;

CREATE TABLE swf.schedule_ticks (
    schedule_id bigint NOT NULL REFERENCES swf.schedules (id) ON DELETE CASCADE,
    tick_at     timestamptz NOT NULL,
    -- 'sent' (a task), 'started' (a workflow run), 'skipped' (the previous run was running).
    outcome     text NOT NULL CHECK (outcome IN ('sent', 'started', 'skipped')),
    task_id     text,
    run_id      uuid,
    -- Ticks this one stands for (policy 'once' after a gap: the ticks folded into it).
    missed      integer NOT NULL DEFAULT 0,
    beat        text NOT NULL,
    fired_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (schedule_id, tick_at)
);
CREATE INDEX schedule_ticks_fired ON swf.schedule_ticks (fired_at);

-- Roles granted a part before this release read both tables (watching the schedule).
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT r.role FROM swf.roles r
                   WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.role) LOOP
        EXECUTE format('GRANT SELECT ON swf.schedules, swf.schedule_ticks TO %I', v_role);
    END LOOP;
END $$;
