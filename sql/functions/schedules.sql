-- The beat schedule (tables: sql/migrations/0018_schedules.sql; the scheduler:
-- swf_celery/schedules). Any number of beat processes run the same loop: in one transaction,
-- take the due entries no other beat holds (swf.schedule_due, FOR UPDATE SKIP LOCKED),
-- publish each tick's message (swf.queue_send, on the same connection) and record the tick
-- and the entry's next run (swf.schedule_fired). A beat killed mid-tick rolls back message
-- and record together; the next beat takes the entry as soon as the lock is gone. A tick is
-- the primary key of swf.schedule_ticks: were two beats ever to fire the same tick, the
-- second transaction fails and its message is never committed.
--
-- Running beat and editing the schedule are the worker's part (and the operator's); every
-- part reads both tables. The next run is computed by Celery's own schedule classes in
-- Python and passed in: nothing here knows cron.

-- The definition of an entry from its JSON (keys as swf_celery.schedules.entries writes them);
-- invalid values raise 22023 naming the field.
CREATE OR REPLACE FUNCTION swf._schedule_check(p_name text, p_entry jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_name IS NULL OR length(p_name) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'swf: a schedule entry needs a name of 1 to 200 characters';
    END IF;
    IF (p_entry ->> 'task' IS NULL) = (p_entry ->> 'workflow' IS NULL) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('swf: schedule entry %L needs a task or a workflow (one of them)',
                             p_name);
    END IF;
    IF coalesce(p_entry ->> 'missed', 'once') NOT IN ('once', 'all', 'skip') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('swf: schedule entry %L: missed must be once, all or skip, not %L',
                             p_name, p_entry ->> 'missed');
    END IF;
    IF jsonb_typeof(p_entry -> 'schedule') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('swf: schedule entry %L has no schedule', p_name);
    END IF;
END $$;

-- Create or change entry p_name; returns it. A changed schedule (or p_reset) takes
-- p_next_run_at; otherwise the entry keeps its next run, its pause and its history.
CREATE OR REPLACE FUNCTION swf.schedule_put(p_name text, p_entry jsonb, p_source text,
                                            p_next_run_at timestamptz,
                                            p_reset boolean DEFAULT false)
RETURNS swf.schedules
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_row swf.schedules;
BEGIN
    PERFORM swf._require_part('change the beat schedule', 'worker');
    PERFORM swf._schedule_check(p_name, p_entry);
    INSERT INTO swf.schedules AS s (name, task, workflow, args, kwargs, options, schedule,
                                    missed, max_missed, skip_if_running, paused, source,
                                    next_run_at)
    VALUES (p_name, p_entry ->> 'task', p_entry ->> 'workflow',
            coalesce(p_entry -> 'args', '[]'), coalesce(p_entry -> 'kwargs', '{}'),
            coalesce(p_entry -> 'options', '{}'), p_entry -> 'schedule',
            coalesce(p_entry ->> 'missed', 'once'),
            coalesce((p_entry ->> 'max_missed')::integer, 100),
            coalesce((p_entry ->> 'skip_if_running')::boolean, false),
            coalesce((p_entry ->> 'paused')::boolean, false), p_source, p_next_run_at)
    ON CONFLICT (name) DO UPDATE SET
        task = EXCLUDED.task, workflow = EXCLUDED.workflow, args = EXCLUDED.args,
        kwargs = EXCLUDED.kwargs, options = EXCLUDED.options, schedule = EXCLUDED.schedule,
        missed = EXCLUDED.missed, max_missed = EXCLUDED.max_missed,
        skip_if_running = EXCLUDED.skip_if_running, source = EXCLUDED.source,
        paused = CASE WHEN p_entry ? 'paused' THEN EXCLUDED.paused ELSE s.paused END,
        next_run_at = CASE WHEN p_reset OR s.schedule IS DISTINCT FROM EXCLUDED.schedule
                           THEN EXCLUDED.next_run_at ELSE s.next_run_at END,
        updated_at = now()
    RETURNING * INTO v_row;
    RETURN v_row;
END $$;
REVOKE EXECUTE ON FUNCTION swf.schedule_put(text, jsonb, text, timestamptz, boolean) FROM PUBLIC;

-- Pause or resume entry p_name (resuming takes p_next_run_at: the ticks of the pause are not
-- run). Returns false when there is no such entry.
CREATE OR REPLACE FUNCTION swf.schedule_pause(p_name text, p_paused boolean,
                                              p_next_run_at timestamptz DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('change the beat schedule', 'worker');
    UPDATE swf.schedules
       SET paused = p_paused, updated_at = now(),
           next_run_at = CASE WHEN NOT p_paused AND paused
                              THEN coalesce(p_next_run_at, next_run_at) ELSE next_run_at END
     WHERE name = p_name;
    RETURN FOUND;
END $$;
REVOKE EXECUTE ON FUNCTION swf.schedule_pause(text, boolean, timestamptz) FROM PUBLIC;

-- Delete entry p_name and its ticks; false when there is no such entry.
CREATE OR REPLACE FUNCTION swf.schedule_delete(p_name text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('change the beat schedule', 'worker');
    DELETE FROM swf.schedules WHERE name = p_name;
    RETURN FOUND;
END $$;
REVOKE EXECUTE ON FUNCTION swf.schedule_delete(text) FROM PUBLIC;

-- Delete the entries that came from a beat's configuration (source 'config') and are no
-- longer in it (p_keep), as Celery's own scheduler drops entries gone from beat_schedule.
CREATE OR REPLACE FUNCTION swf.schedule_prune(p_keep text[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    PERFORM swf._require_part('change the beat schedule', 'worker');
    DELETE FROM swf.schedules
     WHERE source = 'config' AND NOT (name = ANY (coalesce(p_keep, '{}')));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION swf.schedule_prune(text[]) FROM PUBLIC;

-- The due entries (not paused, next run reached) that no other beat holds, locked for the
-- caller's transaction, earliest first (a transaction idle for 10 s is ended by the server). The caller fires them and calls swf.schedule_fired
-- for each before it commits.
CREATE OR REPLACE FUNCTION swf.schedule_due(p_limit integer) RETURNS SETOF swf.schedules
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('run beat', 'worker');
    -- A beat alive but stuck inside its tick (SIGSTOP, a hung publish) holds its entries
    -- until its session ends: PostgreSQL ends it after this long idle in the transaction.
    PERFORM set_config('idle_in_transaction_session_timeout', '10s', true);
    RETURN QUERY
        SELECT * FROM swf.schedules
         WHERE NOT paused AND next_run_at <= clock_timestamp()
         ORDER BY next_run_at
         LIMIT greatest(p_limit, 1)
           FOR UPDATE SKIP LOCKED;
END $$;
REVOKE EXECUTE ON FUNCTION swf.schedule_due(integer) FROM PUBLIC;

-- Record the ticks entry p_id fired (p_ticks: [{"tick_at", "outcome", "task_id", "run_id",
-- "missed"}], possibly none when every tick was skipped by policy) by beat p_beat, and its
-- next run. A tick recorded before raises unique_violation: the caller's transaction, its
-- messages with it, rolls back.
CREATE OR REPLACE FUNCTION swf.schedule_fired(p_id bigint, p_ticks jsonb, p_beat text,
                                              p_next_run_at timestamptz) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    PERFORM swf._require_part('run beat', 'worker');
    -- The tick's transaction commits synchronously whatever the session's setting (the
    -- broker's connection runs with it off; its publishes set it off for the transaction,
    -- so this comes after them): a worker may run the task as soon as it is committed, and
    -- a server crash must not then forget the tick and let a beat send it again.
    PERFORM set_config('synchronous_commit', 'on', true);
    INSERT INTO swf.schedule_ticks (schedule_id, tick_at, outcome, task_id, run_id, missed, beat)
    SELECT p_id, (t ->> 'tick_at')::timestamptz, t ->> 'outcome', t ->> 'task_id',
           (t ->> 'run_id')::uuid, coalesce((t ->> 'missed')::integer, 0), p_beat
      FROM jsonb_array_elements(coalesce(p_ticks, '[]')) AS t;
    UPDATE swf.schedules s
       SET next_run_at = p_next_run_at,
           last_run_at = coalesce((SELECT max((t ->> 'tick_at')::timestamptz)
                                     FROM jsonb_array_elements(coalesce(p_ticks, '[]')) AS t),
                                  s.last_run_at),
           total_run_count = s.total_run_count + (
               SELECT count(*) FROM jsonb_array_elements(coalesce(p_ticks, '[]')) AS t
                WHERE t ->> 'outcome' <> 'skipped')
     WHERE s.id = p_id;
END $$;
REVOKE EXECUTE ON FUNCTION swf.schedule_fired(bigint, jsonb, text, timestamptz) FROM PUBLIC;
