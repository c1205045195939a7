-- 0010: every outcome of a workflow step reaches the coordinator, and nothing runs twice.
--
-- * Engine events move to their own reserved NOTIFY channel, "swf:workflow_events" (user
--   channels all map to "swf_…" or "swf#…", see swf_celery/messaging/channels.py), so that
--   "workflow_events" is an ordinary user channel again.
-- * complete_task / fail_task re-read their task once the run's lock is theirs: a retry may
--   have moved a running attempt to the new run meanwhile (see retry_run below).
-- * Retry backoff is capped (swf.max_retry_delay_ms, one hour): it used to overflow an
--   integer at about attempt 32.
-- * A redelivered message of a run that is no longer active ends its attempt ('cancelled')
--   instead of leaving it 'started' for good.
-- * retry_run adopts the attempts of the old run that are still running: they finish as
--   attempts of the new run, so no step has two live executions. With p_reuse false
--   (reset_all) they are cancelled and returned for the caller to revoke (terminate).
-- * swf.sweep_timeouts(): the workers' clock-driven sweep of overdue attempts, one sweeper
--   at a time (a transaction-level advisory lock: works through PgBouncer).
-- * swf.abandon_task(): a revoked step task ends its attempt (the worker reports it).
-- * swf.fail_dead_steps(): a dead-lettered step message fails its attempt (called by the
--   transport's reject before it buries the messages).
-- * swf.add_to_chord(): idempotent per added task id.
-- * swf.run_status reports overdue attempts.
-- * A waiting caller (swf.expire_tasks / swf.run_tick) fails a distributed attempt only
--   once its hard time limit has passed too (deadline + 10 s): before that the worker's
--   soft limit or the sweep (which also revokes it) ends it, so a retried attempt never
--   overlaps an execution that is still running.

CREATE OR REPLACE FUNCTION swf._notify(p_run uuid, p_step text, p_status text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('swf:workflow_events',
                     json_build_object('run_id', p_run, 'step', p_step, 'status', p_status)::text);
$$;


CREATE FUNCTION swf.max_retry_delay_ms() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 3600000::bigint $$;


-- As in 0004, except that the tasks left to do are counted after the insert: a retried run
-- may hold adopted attempts that are still running (status 'started').
CREATE OR REPLACE FUNCTION swf._start_step(p_run uuid, p_step text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_run   swf.runs;
    v_state swf.step_states;
    v_items jsonb;
    v_count integer := 1;
    v_left  integer;
BEGIN
    SELECT * INTO v_run FROM swf.runs WHERE id = p_run;
    SELECT * INTO v_state FROM swf.step_states WHERE run_id = p_run AND step_name = p_step;
    IF v_state.status NOT IN ('created', 'ready') THEN
        RETURN;
    END IF;
    IF v_run.status = 'paused' THEN
        UPDATE swf.step_states SET status = 'ready' WHERE run_id = p_run AND step_name = p_step;
        PERFORM swf._notify(p_run, p_step, 'ready');
        RETURN;
    END IF;
    IF v_run.status <> 'in_progress' THEN
        RETURN;
    END IF;
    IF v_state.map_over IS NOT NULL THEN
        IF v_state.map_over = 'run' THEN
            v_items := v_run.input;
        ELSE
            SELECT output INTO v_items FROM swf.step_states
             WHERE run_id = p_run AND step_name = v_state.map_over;
        END IF;
        IF v_items IS NULL OR jsonb_typeof(v_items) <> 'array' THEN
            UPDATE swf.step_states
               SET status = 'failed', completed_at = now(),
                   error = format('map_over %s: expected a list, got %s', v_state.map_over,
                                  coalesce(jsonb_typeof(v_items), 'nothing'))
             WHERE run_id = p_run AND step_name = p_step;
            PERFORM swf._notify(p_run, p_step, 'failed');
            PERFORM swf._fail_run(p_run, p_step,
                format('map_over %s: expected a list, got %s', v_state.map_over,
                       coalesce(jsonb_typeof(v_items), 'nothing')));
            RETURN;
        END IF;
        v_count := jsonb_array_length(v_items);
    END IF;
    PERFORM swf._notify(p_run, p_step, 'started');
    INSERT INTO swf.step_tasks (run_id, step_name, task_index, task_id, execution, item)
    SELECT p_run, p_step, i, gen_random_uuid(), v_state.execution,
           CASE WHEN v_items IS NULL THEN NULL ELSE v_items -> i END
      FROM generate_series(0, v_count - 1) AS i
        ON CONFLICT (run_id, step_name, task_index) DO NOTHING;
    SELECT count(*) INTO v_left FROM swf.step_tasks
     WHERE run_id = p_run AND step_name = p_step AND status <> 'completed';
    UPDATE swf.step_states
       SET status = 'started', started_at = now(), task_count = v_count,
           remaining_tasks = v_left
     WHERE run_id = p_run AND step_name = p_step;
    IF v_left = 0 THEN
        PERFORM swf._complete_step(p_run, p_step,
            (SELECT CASE WHEN v_state.map_over IS NULL
                         THEN (array_agg(output ORDER BY task_index))[1]
                         ELSE coalesce(jsonb_agg(output ORDER BY task_index), '[]') END
               FROM swf.step_tasks WHERE run_id = p_run AND step_name = p_step));
        RETURN;
    END IF;
    IF v_state.execution = 'distributed' THEN
        PERFORM swf._dispatch(p_run, p_step, NULL, 0);
    END IF;
END $$;


-- Lock the run a task belongs to and return the task as it is under that lock. A retry may
-- move a running attempt to the new run between the first read and the lock: follow it.
CREATE FUNCTION swf._lock_task(p_task uuid) RETURNS swf.step_tasks
LANGUAGE plpgsql AS $$
DECLARE
    v_task swf.step_tasks;
    v_run  uuid;
BEGIN
    LOOP
        SELECT * INTO v_task FROM swf.step_tasks WHERE task_id = p_task;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        v_run := v_task.run_id;
        PERFORM 1 FROM swf.runs WHERE id = v_run FOR UPDATE;
        -- No row lock: every transition that moves a task holds its run's lock, and the
        -- callers' UPDATEs re-check the status (swf.start_task locks the row itself).
        SELECT * INTO v_task FROM swf.step_tasks WHERE task_id = p_task;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        IF v_task.run_id = v_run THEN
            RETURN v_task;
        END IF;
    END LOOP;
END $$;


-- A worker (or the local runner) is about to run a task; as in 0004, and a message of a
-- run that is no longer active ends its attempt (a redelivery after its worker died).
CREATE OR REPLACE FUNCTION swf.start_task(p_task uuid) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_task  swf.step_tasks;
    v_state swf.step_states;
    v_run   swf.runs;
    v_input jsonb;
BEGIN
    SELECT * INTO v_task FROM swf.step_tasks WHERE task_id = p_task FOR UPDATE;
    IF NOT FOUND OR v_task.status NOT IN ('queued', 'started') THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_run FROM swf.runs WHERE id = v_task.run_id;
    IF v_run.status NOT IN ('in_progress', 'paused') THEN
        UPDATE swf.step_tasks SET status = 'cancelled', deadline = NULL, completed_at = now(),
                                  error = coalesce(error, 'run ' || v_run.status)
         WHERE task_id = p_task;
        RETURN NULL;
    END IF;
    SELECT * INTO v_state FROM swf.step_states
     WHERE run_id = v_task.run_id AND step_name = v_task.step_name;
    UPDATE swf.step_tasks
       SET status = 'started', started_at = now(),
           deadline = now() + make_interval(secs => v_state.timeout_ms / 1000.0)
     WHERE task_id = p_task;
    SELECT jsonb_build_object('run', v_run.input)
           || coalesce(jsonb_object_agg(step_name, output), '{}'::jsonb)
      INTO v_input
      FROM swf.step_states
     WHERE run_id = v_task.run_id AND step_name = ANY (v_state.depends_on);
    IF v_state.map_over IS NOT NULL THEN
        v_input := v_input || jsonb_build_object('item', v_task.item, 'index', v_task.task_index);
    END IF;
    RETURN jsonb_build_object(
        'run_id', v_task.run_id, 'step', v_task.step_name, 'index', v_task.task_index,
        'attempt', v_task.attempt, 'task_name', v_state.task_name,
        'timeout_ms', v_state.timeout_ms, 'input', v_input);
END $$;


CREATE OR REPLACE FUNCTION swf.complete_task(p_task uuid, p_output jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_task      swf.step_tasks := swf._lock_task(p_task);
    v_remaining integer;
    v_map       text;
    v_output    jsonb;
BEGIN
    IF v_task.task_id IS NULL OR v_task.status NOT IN ('queued', 'started') THEN
        RETURN 'ignored';
    END IF;
    UPDATE swf.step_tasks
       SET status = 'completed', output = p_output, completed_at = now(), deadline = NULL
     WHERE task_id = p_task AND status IN ('queued', 'started');
    IF NOT FOUND THEN
        RETURN 'ignored';
    END IF;
    SELECT map_over INTO v_map FROM swf.step_states
     WHERE run_id = v_task.run_id AND step_name = v_task.step_name;
    IF v_map IS NULL THEN
        PERFORM swf._complete_step(v_task.run_id, v_task.step_name, p_output);
        RETURN 'completed';
    END IF;
    UPDATE swf.step_states SET remaining_tasks = remaining_tasks - 1
     WHERE run_id = v_task.run_id AND step_name = v_task.step_name AND status = 'started'
    RETURNING remaining_tasks INTO v_remaining;
    IF NOT FOUND OR v_remaining > 0 THEN
        RETURN 'completed';
    END IF;
    SELECT jsonb_agg(output ORDER BY task_index) INTO v_output FROM swf.step_tasks
     WHERE run_id = v_task.run_id AND step_name = v_task.step_name;
    PERFORM swf._complete_step(v_task.run_id, v_task.step_name, v_output);
    RETURN 'completed';
END $$;


-- As in 0004, with the backoff capped at swf.max_retry_delay_ms().
CREATE OR REPLACE FUNCTION swf.fail_task(p_task uuid, p_error text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_task  swf.step_tasks := swf._lock_task(p_task);
    v_state swf.step_states;
    v_run   swf.runs;
    v_delay_ms bigint;
    v_new   uuid := gen_random_uuid();
BEGIN
    IF v_task.task_id IS NULL THEN
        RETURN 'ignored';
    END IF;
    -- A failure rewrites the task (new id, attempt): hold its row while deciding.
    SELECT * INTO v_task FROM swf.step_tasks WHERE task_id = p_task FOR UPDATE;
    IF NOT FOUND OR v_task.status NOT IN ('queued', 'started') THEN
        RETURN 'ignored';
    END IF;
    SELECT * INTO v_run FROM swf.runs WHERE id = v_task.run_id;
    SELECT * INTO v_state FROM swf.step_states
     WHERE run_id = v_task.run_id AND step_name = v_task.step_name;
    IF v_run.status IN ('in_progress', 'paused') AND v_task.attempt < v_state.max_attempts THEN
        v_delay_ms := least(v_state.retry_delay_ms::numeric
                            * power(2::numeric, least(v_task.attempt - 1, 64)),
                            swf.max_retry_delay_ms())::bigint;
        UPDATE swf.step_tasks
           SET task_id = v_new, attempt = attempt + 1, error = p_error,
               status = CASE WHEN v_run.status = 'paused' THEN 'paused' ELSE 'queued' END,
               started_at = NULL, deadline = NULL, message_id = NULL,
               available_at = now() + make_interval(secs => v_delay_ms / 1000.0)
         WHERE task_id = p_task;
        PERFORM swf._notify(v_task.run_id, v_task.step_name, 'retrying');
        IF v_task.execution = 'distributed' AND v_run.status = 'in_progress' THEN
            PERFORM swf._dispatch(v_task.run_id, v_task.step_name, v_new,
                                  ceil(v_delay_ms / 1000.0)::integer);
        END IF;
        RETURN 'retrying';
    END IF;
    UPDATE swf.step_tasks
       SET status = 'failed', error = p_error, completed_at = now(), deadline = NULL
     WHERE task_id = p_task;
    IF v_run.status NOT IN ('in_progress', 'paused') THEN
        RETURN 'failed';
    END IF;
    UPDATE swf.step_states SET status = 'failed', error = p_error, completed_at = now()
     WHERE run_id = v_task.run_id AND step_name = v_task.step_name;
    PERFORM swf._notify(v_task.run_id, v_task.step_name, 'failed');
    PERFORM swf._fail_run(v_task.run_id, v_task.step_name,
        CASE WHEN v_state.map_over IS NULL THEN p_error
             ELSE format('item %s: %s', v_task.task_index, p_error) END);
    RETURN 'failed';
END $$;


-- The distributed attempts of a run that are running now (to revoke when the run failed).
CREATE FUNCTION swf.running_tasks(p_run uuid) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(task_id::text ORDER BY task_id), '{}') FROM swf.step_tasks
     WHERE run_id = p_run AND status = 'started' AND execution = 'distributed';
$$;


-- A step task was revoked on its worker (the worker reports it): its attempt ends. In an
-- active run that is a failed attempt (retried as usual); otherwise it is cancelled.
CREATE FUNCTION swf.abandon_task(p_task uuid, p_reason text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_task swf.step_tasks := swf._lock_task(p_task);
    v_run  swf.runs;
BEGIN
    IF v_task.task_id IS NULL OR v_task.status NOT IN ('queued', 'started') THEN
        RETURN 'ignored';
    END IF;
    SELECT * INTO v_run FROM swf.runs WHERE id = v_task.run_id;
    IF v_run.status IN ('in_progress', 'paused') THEN
        RETURN swf.fail_task(p_task, p_reason);
    END IF;
    UPDATE swf.step_tasks SET status = 'cancelled', deadline = NULL, completed_at = now(),
                              error = coalesce(error, p_reason)
     WHERE task_id = p_task AND status IN ('queued', 'started');
    RETURN CASE WHEN FOUND THEN 'cancelled' ELSE 'ignored' END;
END $$;


-- The workers' sweep: fail every attempt past its deadline, in one transaction, by one
-- sweeper at a time (others return NULL at once). Returns {"expired": n, "revoke": [ids]}:
-- the expired attempts and the running attempts of the runs this sweep failed, for the
-- caller to revoke (terminate).
CREATE FUNCTION swf.sweep_timeouts() RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_task    record;
    v_count   integer := 0;
    v_failed  uuid[] := '{}';
    v_expired text[] := '{}';
    v_out     text;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('swf-celery:sweep'), 0) THEN
        RETURN NULL;
    END IF;
    FOR v_task IN
        SELECT t.task_id, t.run_id, t.execution, s.timeout_ms FROM swf.step_tasks t
          JOIN swf.step_states s ON s.run_id = t.run_id AND s.step_name = t.step_name
         WHERE t.status = 'started' AND t.deadline < now()
         ORDER BY t.run_id, t.task_id
    LOOP
        v_out := swf.fail_task(v_task.task_id,
                               format('timed out after %s s',
                                      trim_scale(v_task.timeout_ms / 1000.0)));
        IF v_out <> 'ignored' THEN
            v_count := v_count + 1;
            IF v_task.execution = 'distributed' THEN
                -- its execution may still run (a step that ignores its soft time limit):
                -- stop it, so that a retried attempt never overlaps it
                v_expired := v_expired || v_task.task_id::text;
            END IF;
        END IF;
        IF v_out = 'failed' THEN
            v_failed := v_failed || v_task.run_id;
        END IF;
    END LOOP;
    RETURN jsonb_build_object(
        'expired', v_count,
        'revoke', to_jsonb(v_expired) || (
                   SELECT coalesce(jsonb_agg(t.task_id::text), '[]'::jsonb)
                     FROM swf.step_tasks t JOIN swf.runs r ON r.id = t.run_id
                    WHERE t.run_id = ANY (v_failed) AND r.status = 'failed'
                      AND t.status = 'started' AND t.execution = 'distributed'));
END $$;


-- Called by the transport before it dead-letters messages of a queue (reject without
-- requeue, too many deliveries, malformed): each workflow step message among them fails
-- its attempt, so its run does not wait for it forever. Never raises: dead-lettering must
-- go on even if the coordinator refuses.
CREATE FUNCTION swf.fail_dead_steps(p_queue text, p_ids bigint[], p_reason text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    q       swf.queues := swf._queue_get(p_queue);
    v_id    text;
    v_count integer := 0;
BEGIN
    -- Transient queues (x-expires / auto_delete: Celery's pidbox, reply and event queues,
    -- 0012_bounded_storage.sql) have no pgmq table, and carry no step messages.
    IF q.id IS NULL OR p_ids IS NULL OR left(q.pgmq_name, 2) = 't_' THEN
        RETURN 0;
    END IF;
    FOR v_id IN EXECUTE format(
        'SELECT message #>> ''{headers,id}'' FROM pgmq.%I WHERE msg_id = ANY ($1) '
        'AND message #>> ''{headers,task}'' = ''swf_celery.step'' ORDER BY msg_id',
        'q_' || q.pgmq_name) USING p_ids
    LOOP
        BEGIN
            IF swf.fail_task(v_id::uuid, 'step message dead-lettered: ' || p_reason)
               <> 'ignored' THEN
                v_count := v_count + 1;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'swf: could not fail the attempt of dead-lettered step task %: %',
                v_id, SQLERRM;
        END;
    END LOOP;
    RETURN v_count;
END $$;


-- Retry as in 0006, and the attempts of the old run still running are not run twice: with
-- p_reuse they are adopted by the new run (their reports complete the new run's steps);
-- without it they are cancelled and returned for the caller to revoke. Returns
-- {"run_id": new id, "revoke": [task ids]}.
DROP FUNCTION swf.retry_run(uuid, boolean);
CREATE FUNCTION swf.retry_run(p_run uuid, p_reuse boolean) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_old    swf.runs := swf._lock_run(p_run);
    v_new    uuid;
    v_reused integer;
    v_step   text;
    v_revoke text[];
BEGIN
    SELECT id INTO v_new FROM swf.runs WHERE retry_of = p_run ORDER BY inserted_at LIMIT 1;
    IF FOUND THEN
        RETURN jsonb_build_object('run_id', v_new, 'revoke', '[]'::jsonb);
    END IF;
    IF v_old.status NOT IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('run %s is %s: only a failed or cancelled run can be retried',
                             p_run, v_old.status);
    END IF;
    INSERT INTO swf.runs (flow_id, flow_slug, input, retry_of, total_steps, remaining_steps)
    VALUES (v_old.flow_id, v_old.flow_slug, v_old.input, p_run, v_old.total_steps,
            v_old.total_steps)
    RETURNING id INTO v_new;
    INSERT INTO swf.step_states (run_id, step_name, step_index, depends_on, dependents,
                                 remaining_deps, status, execution, task_name, queue,
                                 max_attempts, retry_delay_ms, timeout_ms, resources, map_over,
                                 task_count, remaining_tasks, output, started_at, completed_at)
    SELECT v_new, s.step_name, s.step_index, s.depends_on, s.dependents,
           (SELECT count(*) FROM swf.step_states d
             WHERE d.run_id = p_run AND d.step_name = ANY (s.depends_on)
               AND NOT (p_reuse AND d.status = 'completed')),
           CASE WHEN p_reuse AND s.status = 'completed' THEN 'completed' ELSE 'created' END,
           s.execution, s.task_name, s.queue, s.max_attempts, s.retry_delay_ms, s.timeout_ms,
           s.resources, s.map_over,
           CASE WHEN p_reuse AND s.status = 'completed' THEN s.task_count END,
           CASE WHEN p_reuse AND s.status = 'completed' THEN 0 END,
           CASE WHEN p_reuse AND s.status = 'completed' THEN s.output END,
           CASE WHEN p_reuse AND s.status = 'completed' THEN s.started_at END,
           CASE WHEN p_reuse AND s.status = 'completed' THEN s.completed_at END
      FROM swf.step_states s WHERE s.run_id = p_run;
    IF p_reuse THEN
        INSERT INTO swf.step_tasks (run_id, step_name, task_index, task_id, execution, attempt,
                                    status, item, output, queued_at, available_at, started_at,
                                    completed_at)
        SELECT v_new, t.step_name, t.task_index, gen_random_uuid(), t.execution, t.attempt,
               'completed', t.item, t.output, t.queued_at, t.available_at, t.started_at,
               t.completed_at
          FROM swf.step_tasks t WHERE t.run_id = p_run AND t.status = 'completed';
        -- Running attempts move over with their ids: their workers report to the new run.
        UPDATE swf.step_tasks SET run_id = v_new
         WHERE run_id = p_run AND status = 'started';
    ELSE
        WITH gone AS (
            UPDATE swf.step_tasks SET status = 'cancelled', deadline = NULL,
                                      completed_at = now()
             WHERE run_id = p_run AND status = 'started'
            RETURNING task_id, execution)
        SELECT array_agg(task_id::text) FILTER (WHERE execution = 'distributed')
          INTO v_revoke FROM gone;
    END IF;
    SELECT count(*) INTO v_reused FROM swf.step_states
     WHERE run_id = v_new AND status = 'completed';
    UPDATE swf.runs SET remaining_steps = total_steps - v_reused WHERE id = v_new;
    PERFORM swf._notify(v_new, NULL, 'in_progress');
    FOR v_step IN SELECT step_name FROM swf.step_states
                   WHERE run_id = v_new AND status = 'created' AND remaining_deps = 0
                   ORDER BY step_index
    LOOP
        PERFORM swf._start_step(v_new, v_step);
    END LOOP;
    RETURN jsonb_build_object('run_id', v_new, 'revoke', to_jsonb(coalesce(v_revoke, '{}')));
END $$;


-- The status view of one run, as in 0006, plus each step's overdue attempts (started and
-- past their deadline: the sweep fails them next) and the run's "overdue" flag.
CREATE OR REPLACE FUNCTION swf.run_status(p_run uuid) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'run_id', r.id, 'workflow_slug', r.flow_slug, 'status', r.status,
        'input', r.input, 'output', r.output, 'error', r.error, 'failed_step', r.failed_step,
        'retry_of', r.retry_of,
        'retried_by', (SELECT n.id FROM swf.runs n WHERE n.retry_of = r.id
                        ORDER BY n.inserted_at LIMIT 1),
        'total_steps', r.total_steps, 'completed_steps', r.total_steps - r.remaining_steps,
        'inserted_at', r.inserted_at, 'updated_at', r.updated_at, 'finished_at', r.finished_at,
        'overdue', EXISTS (SELECT 1 FROM swf.step_tasks t
                            WHERE t.run_id = r.id AND t.status = 'started'
                              AND t.deadline < now()),
        'steps', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'name', s.step_name, 'status', s.status, 'depends_on', s.depends_on,
                       'execution', s.execution, 'queue', s.queue, 'task_name', s.task_name,
                       'resources', s.resources, 'map_over', s.map_over,
                       'task_count', s.task_count,
                       'completed_tasks', (SELECT count(*) FROM swf.step_tasks t
                                            WHERE t.run_id = s.run_id
                                              AND t.step_name = s.step_name
                                              AND t.status = 'completed'),
                       'overdue_tasks', (SELECT count(*) FROM swf.step_tasks t
                                          WHERE t.run_id = s.run_id
                                            AND t.step_name = s.step_name
                                            AND t.status = 'started'
                                            AND t.deadline < now()),
                       'attempts', (SELECT coalesce(max(t.attempt), 0) FROM swf.step_tasks t
                                     WHERE t.run_id = s.run_id AND t.step_name = s.step_name),
                       'error', coalesce(s.error,
                                         (SELECT t.error FROM swf.step_tasks t
                                           WHERE t.run_id = s.run_id
                                             AND t.step_name = s.step_name
                                             AND t.error IS NOT NULL
                                           ORDER BY t.task_index LIMIT 1)),
                       'started_at', s.started_at, 'completed_at', s.completed_at)
                   ORDER BY s.step_index)
              FROM swf.step_states s WHERE s.run_id = r.id), '[]'::jsonb))
      FROM swf.runs r WHERE r.id = p_run;
$$;


-- add_to_chord, once per added task: a retried call (its reply lost) counts nothing twice.
CREATE TABLE swf.chord_additions (
    group_id text NOT NULL REFERENCES swf.chords (group_id) ON DELETE CASCADE,
    task_id  text NOT NULL,
    PRIMARY KEY (group_id, task_id)
);

CREATE FUNCTION swf.add_to_chord(p_group text, p_task text) RETURNS boolean
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


-- The grace a waiting caller gives a distributed attempt past its deadline: the hard time
-- limit the step message carries (swf._step_message: soft limit + 10 s).
CREATE FUNCTION swf.caller_expiry_grace(p_execution text) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_execution = 'distributed' THEN interval '10 seconds'
                ELSE interval '0' END
$$;

CREATE OR REPLACE FUNCTION swf.expire_tasks(p_run uuid DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_task  record;
    v_count integer := 0;
BEGIN
    FOR v_task IN
        SELECT t.task_id, s.timeout_ms FROM swf.step_tasks t
          JOIN swf.step_states s ON s.run_id = t.run_id AND s.step_name = t.step_name
         WHERE t.status = 'started'
           AND t.deadline + swf.caller_expiry_grace(t.execution) < now()
           AND (p_run IS NULL OR t.run_id = p_run)
         ORDER BY t.run_id, t.task_id
    LOOP
        IF swf.fail_task(v_task.task_id,
                         format('timed out after %s s', trim_scale(v_task.timeout_ms / 1000.0))) <> 'ignored'
        THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END $$;

CREATE OR REPLACE FUNCTION swf.run_tick(p_run uuid) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_run  swf.runs;
    v_next timestamptz;
BEGIN
    PERFORM swf.expire_tasks(p_run);
    SELECT * INTO v_run FROM swf.runs WHERE id = p_run;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT least(
        (SELECT min(deadline + swf.caller_expiry_grace(execution)) FROM swf.step_tasks
          WHERE run_id = p_run AND status = 'started'),
        (SELECT min(available_at) FROM swf.step_tasks
          WHERE run_id = p_run AND status = 'queued' AND execution = 'local'))
      INTO v_next;
    RETURN jsonb_build_object(
        'status', v_run.status, 'output', v_run.output, 'error', v_run.error,
        'failed_step', v_run.failed_step,
        'wake_in_ms', CASE WHEN v_next IS NULL THEN NULL
                           ELSE greatest(0, extract(epoch FROM v_next - now()) * 1000) END);
END $$;
