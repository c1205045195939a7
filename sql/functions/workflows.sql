-- The workflow state machine (tables: sql/migrations/0004_workflows.sql). Flows and their
-- steps, runs, step states and step tasks move between states only through these functions.
-- Every transition of a run takes the run's row lock first, so transitions of one run are
-- serialised (no lost decrement, no deadlock between two completing steps) and runs never
-- block each other.
--
-- Step task ids are the Celery task ids of their messages. An attempt that is retried gets
-- a new id, so a late or duplicate report about an old attempt matches nothing and is
-- ignored: that is what makes completion idempotent. complete_task / fail_task re-read their
-- task once the run's lock is theirs: a retry may have moved a running attempt to the new
-- run meanwhile (retry_run, lifecycle.sql).
--
-- Distributed steps are dispatched with swf.queue_send_many() (the broker's SQL, same database,
-- same transaction); local steps are left 'queued' for the process that started the run.
-- Every transition stores an event {"run_id", "step", "status"} on the channel
-- "workflow_events" (the engine's: users listen to it and read its history, only the engine
-- sends) and NOTIFYs "swf_workflow_events" with its message id and the event (swf._notify):
-- ids and states only, never inputs or outputs. The NOTIFY is a hint (swf.notify_hint):
-- skipped while the notification queue is too full, so no transition ever fails because a
-- listener is slow; the stored event stays.
--
-- Retry backoff is capped (swf.max_retry_delay_ms, one hour). A redelivered message of a
-- run that is no longer active ends its attempt ('cancelled'). A waiting caller
-- (swf.expire_tasks / swf.run_tick) fails a distributed attempt only once its hard time
-- limit has passed too (deadline + 10 s): before that the worker's soft limit or the sweep
-- (swf.sweep_timeouts, which also revokes it) ends it, so a retried attempt never overlaps
-- an execution that is still running.

-- One run event: a message of the channel "workflow_events" (its pgmq queue, created by
-- migration 0020) and a NOTIFY of its id with the event, in one statement. Listeners read it
-- as a stored message (swf_celery.listen("workflow_events"): kind "message", message_id),
-- readers of history with get_message / read_pending; retention drops it with the channel's
-- other messages.
CREATE OR REPLACE FUNCTION swf._notify(p_run uuid, p_step text, p_status text) RETURNS void
LANGUAGE sql AS $$
    WITH event AS (
        INSERT INTO pgmq.q_swf_ch_workflow_events (vt, message)
        VALUES (clock_timestamp(),
                jsonb_build_object('run_id', p_run, 'step', p_step, 'status', p_status))
        RETURNING msg_id)
    SELECT swf.notify_hint('swf_workflow_events',
                           json_build_object('swf_message_id', msg_id, 'run_id', p_run,
                                             'step', p_step, 'status', p_status)::text)
      FROM event;
$$;

CREATE OR REPLACE FUNCTION swf.max_retry_delay_ms() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 3600000::bigint $$;

-- The grace a waiting caller gives a distributed attempt past its deadline: the hard time
-- limit the step message carries (swf._step_message: soft limit + 10 s).
CREATE OR REPLACE FUNCTION swf.caller_expiry_grace(p_execution text) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_execution = 'distributed' THEN interval '10 seconds'
                ELSE interval '0' END
$$;

-- The Celery protocol-2 message of one step task, in the form kombu's virtual
-- Channel._put receives: the body is [args, kwargs, embed] as base64 JSON. The task is the
-- step runner (swf_celery.step); "shadow" shows the user's task name in logs and monitors.
CREATE OR REPLACE FUNCTION swf._step_message(p_task_id uuid, p_run uuid, p_step text, p_index integer,
                                  p_attempt integer, p_task_name text, p_queue text,
                                  p_timeout_ms integer) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'body', translate(encode(convert_to(jsonb_build_array(
                    jsonb_build_array(jsonb_build_object('run_id', p_run, 'step', p_step,
                                                         'index', p_index, 'attempt', p_attempt)),
                    '{}'::jsonb,
                    jsonb_build_object('callbacks', NULL, 'errbacks', NULL, 'chain', NULL,
                                       'chord', NULL))::text, 'UTF8'), 'base64'), E'\n', ''),
        'content-type', 'application/json',
        'content-encoding', 'utf-8',
        'headers', jsonb_build_object(
            'lang', 'py', 'task', 'swf_celery.step', 'id', p_task_id, 'shadow', p_task_name,
            'eta', NULL, 'expires', NULL, 'group', NULL, 'group_index', NULL,
            'retries', p_attempt - 1,
            -- soft limit = the step's timeout (the runner reports it), hard limit 10 s later
            'timelimit', jsonb_build_array(
                CASE WHEN p_timeout_ms IS NULL THEN NULL ELSE p_timeout_ms / 1000.0 + 10 END,
                CASE WHEN p_timeout_ms IS NULL THEN NULL ELSE p_timeout_ms / 1000.0 END),
            'root_id', p_run, 'parent_id', NULL,
            'argsrepr', format('(%s step %s[%s] attempt %s)', p_run, p_step, p_index, p_attempt),
            'kwargsrepr', '{}', 'origin', 'swf-coordinator', 'ignore_result', true,
            'stamped_headers', NULL, 'stamps', '{}'::jsonb),
        'properties', jsonb_build_object(
            'correlation_id', p_task_id, 'reply_to', '', 'delivery_mode', 2,
            'delivery_info', jsonb_build_object('exchange', '', 'routing_key', p_queue),
            'priority', 0, 'body_encoding', 'base64', 'delivery_tag', gen_random_uuid()));
$$;

-- Send the queued distributed tasks of a step (all of them, or one by task id): the
-- messages of a map step's items in one insert (swf.queue_send_many).
CREATE OR REPLACE FUNCTION swf._dispatch(p_run uuid, p_step text, p_task uuid, p_delay_s integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_queue    text;
    v_tasks    uuid[];
    v_messages jsonb[];
BEGIN
    SELECT s.queue, array_agg(t.task_id ORDER BY t.task_index),
           array_agg(swf._step_message(t.task_id, t.run_id, t.step_name, t.task_index,
                                       t.attempt, s.task_name, s.queue, s.timeout_ms)
                     ORDER BY t.task_index)
      INTO v_queue, v_tasks, v_messages
      FROM swf.step_tasks t
      JOIN swf.step_states s ON s.run_id = t.run_id AND s.step_name = t.step_name
     WHERE t.run_id = p_run AND t.step_name = p_step AND t.status = 'queued'
       AND s.execution = 'distributed'
       AND (p_task IS NULL OR t.task_id = p_task)
     GROUP BY s.queue;
    IF v_tasks IS NULL THEN
        RETURN;
    END IF;
    UPDATE swf.step_tasks t
       SET message_id = sent.message_id
      FROM unnest(v_tasks, swf.queue_send_many(v_queue, v_messages, p_delay_s))
           AS sent(task_id, message_id)
     WHERE t.run_id = p_run AND t.step_name = p_step AND t.task_id = sent.task_id;
END $$;

-- Start a step whose dependencies are done: one task, or one per item of a map step. The
-- tasks left to do are counted after the insert: a retried run may hold adopted attempts
-- that are still running (status 'started').
CREATE OR REPLACE FUNCTION swf._start_step(p_run uuid, p_step text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_run   swf.runs;
    v_state swf.step_states;
    v_items jsonb;
    v_count integer := 1;
    v_left  integer;
    v_due   timestamptz;
BEGIN
    SELECT * INTO v_run FROM swf.runs WHERE id = p_run;
    SELECT * INTO v_state FROM swf.step_states WHERE run_id = p_run AND step_name = p_step;
    IF v_state.status NOT IN ('created', 'ready', 'waiting') THEN
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
    -- Signals and durable sleep: a step that waits for a signal not sent yet stays
    -- 'waiting' with no task (swf.signal_run starts it); one that waits for a time gets its
    -- tasks now, due then (a delayed message, or a local task not claimable before).
    IF v_state.wait_for IS NOT NULL OR v_state.wait_until IS NOT NULL
       OR v_state.wait_seconds IS NOT NULL THEN
        v_due := coalesce(v_state.due_at, v_state.wait_until,
                          now() + make_interval(secs => v_state.wait_seconds));
        IF v_state.wait_for IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM swf.run_signals WHERE run_id = p_run AND name = v_state.wait_for)
        THEN
            IF v_state.status <> 'waiting' THEN
                UPDATE swf.step_states SET status = 'waiting', due_at = v_due
                 WHERE run_id = p_run AND step_name = p_step;
                PERFORM swf._notify(p_run, p_step, 'waiting');
            END IF;
            RETURN;
        END IF;
        IF v_due > now() THEN
            UPDATE swf.step_states SET due_at = v_due WHERE run_id = p_run AND step_name = p_step;
        ELSE
            v_due := NULL;
        END IF;
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
    PERFORM swf._notify(p_run, p_step, CASE WHEN v_due IS NULL THEN 'started' ELSE 'waiting' END);
    INSERT INTO swf.step_tasks (run_id, step_name, task_index, task_id, execution, item,
                                available_at)
    SELECT p_run, p_step, i, gen_random_uuid(), v_state.execution,
           CASE WHEN v_items IS NULL THEN NULL ELSE v_items -> i END, coalesce(v_due, now())
      FROM generate_series(0, v_count - 1) AS i
        ON CONFLICT (run_id, step_name, task_index) DO NOTHING;
    SELECT count(*) INTO v_left FROM swf.step_tasks
     WHERE run_id = p_run AND step_name = p_step AND status <> 'completed';
    -- A step sleeping until v_due reads 'waiting' until its task starts (swf.start_task).
    UPDATE swf.step_states
       SET status = CASE WHEN v_due IS NULL OR v_left = 0 THEN 'started' ELSE 'waiting' END,
           started_at = now(), task_count = v_count, remaining_tasks = v_left
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
        PERFORM swf._dispatch(p_run, p_step, NULL,
            CASE WHEN v_due IS NULL THEN 0
                 ELSE ceil(extract(epoch FROM v_due - now()))::integer END);
    END IF;
END $$;

-- A step's output is final: store it, let dependents whose last dependency this was start,
-- and complete the run when it was the last step.
CREATE OR REPLACE FUNCTION swf._complete_step(p_run uuid, p_step text, p_output jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_run       swf.runs;
    v_dependents text[];
    v_ready     text;
BEGIN
    UPDATE swf.step_states
       SET status = 'completed', output = p_output, completed_at = now(), remaining_tasks = 0
     WHERE run_id = p_run AND step_name = p_step AND status = 'started'
    RETURNING dependents INTO v_dependents;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM swf._notify(p_run, p_step, 'completed');
    UPDATE swf.runs SET remaining_steps = remaining_steps - 1, updated_at = now()
     WHERE id = p_run RETURNING * INTO v_run;
    IF v_run.status NOT IN ('in_progress', 'paused') THEN
        RETURN;  -- a failed or cancelled run keeps the output (a retry reuses it)
    END IF;
    UPDATE swf.step_states SET remaining_deps = remaining_deps - 1
     WHERE run_id = p_run AND step_name = ANY (v_dependents);
    FOR v_ready IN
        SELECT step_name FROM swf.step_states
         WHERE run_id = p_run AND step_name = ANY (v_dependents) AND remaining_deps = 0
           AND status = 'created'
         ORDER BY step_index
    LOOP
        PERFORM swf._start_step(p_run, v_ready);
    END LOOP;
    IF v_run.remaining_steps = 0 THEN
        UPDATE swf.runs
           SET status = 'completed', finished_at = now(), updated_at = now(),
               output = (SELECT coalesce(jsonb_object_agg(step_name, output ORDER BY step_index),
                                         '{}'::jsonb)
                           FROM swf.step_states
                          WHERE run_id = p_run AND dependents = '{}')
         WHERE id = p_run;
        PERFORM swf._notify(p_run, NULL, 'completed');
    END IF;
END $$;

-- A step is skipped (its predicate said so, a dependency was skipped, or it used up its
-- attempts with on_exhausted 'skip'): its output is NULL and it counts as done. Its queued
-- tasks are cancelled. Each dependent is told: one that runs on partial inputs
-- (run_on_skip) starts once its other dependencies are done; the others are skipped too.
CREATE OR REPLACE FUNCTION swf._skip_step(p_run uuid, p_step text, p_reason text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_run        swf.runs;
    v_dependents text[];
    v_next       record;
    v_ids        text[];
BEGIN
    UPDATE swf.step_states
       SET status = 'skipped', output = NULL, error = p_reason, completed_at = now(),
           remaining_tasks = 0
     WHERE run_id = p_run AND step_name = p_step
       AND status IN ('created', 'ready', 'waiting', 'started')
    RETURNING dependents INTO v_dependents;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    WITH gone AS (
        UPDATE swf.step_tasks SET status = 'cancelled', deadline = NULL, completed_at = now()
         WHERE run_id = p_run AND step_name = p_step AND status IN ('queued', 'paused')
        RETURNING task_id, execution)
    SELECT array_agg(task_id::text) FILTER (WHERE execution = 'distributed') INTO v_ids
      FROM gone;
    IF v_ids IS NOT NULL THEN
        PERFORM swf.queue_remove_tasks(v_ids);
    END IF;
    PERFORM swf._notify(p_run, p_step, 'skipped');
    UPDATE swf.runs SET remaining_steps = remaining_steps - 1, updated_at = now()
     WHERE id = p_run RETURNING * INTO v_run;
    IF v_run.status NOT IN ('in_progress', 'paused') THEN
        RETURN;
    END IF;
    UPDATE swf.step_states SET remaining_deps = remaining_deps - 1
     WHERE run_id = p_run AND step_name = ANY (v_dependents);
    FOR v_next IN
        SELECT step_name, run_on_skip, remaining_deps FROM swf.step_states
         WHERE run_id = p_run AND step_name = ANY (v_dependents)
           AND status IN ('created', 'ready', 'waiting')
         ORDER BY step_index
    LOOP
        IF NOT v_next.run_on_skip THEN
            PERFORM swf._skip_step(p_run, v_next.step_name,
                                   format('its dependency %s was skipped', p_step));
        ELSIF v_next.remaining_deps = 0 THEN
            PERFORM swf._start_step(p_run, v_next.step_name);
        END IF;
    END LOOP;
    PERFORM swf._finish_run(p_run);
END $$;

-- Complete the run when no step is left (after a skip; _complete_step does it inline).
CREATE OR REPLACE FUNCTION swf._finish_run(p_run uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE swf.runs
       SET status = 'completed', finished_at = now(), updated_at = now(),
           output = (SELECT coalesce(jsonb_object_agg(step_name, output ORDER BY step_index),
                                     '{}'::jsonb)
                       FROM swf.step_states
                      WHERE run_id = p_run AND dependents = '{}')
     WHERE id = p_run AND remaining_steps = 0 AND status = 'in_progress';
    IF FOUND THEN
        PERFORM swf._notify(p_run, NULL, 'completed');
    END IF;
END $$;

-- The run failed at p_step: mark it, cancel its queued tasks and remove their messages.
CREATE OR REPLACE FUNCTION swf._fail_run(p_run uuid, p_step text, p_error text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
BEGIN
    UPDATE swf.runs
       SET status = 'failed', error = p_error, failed_step = p_step, finished_at = now(),
           updated_at = now()
     WHERE id = p_run AND status IN ('in_progress', 'paused');
    IF NOT FOUND THEN
        RETURN;
    END IF;
    WITH cancelled AS (
        UPDATE swf.step_tasks SET status = 'cancelled', deadline = NULL
         WHERE run_id = p_run AND status IN ('queued', 'paused')
        RETURNING task_id, execution)
    SELECT array_agg(task_id::text) FILTER (WHERE execution = 'distributed') INTO v_ids
      FROM cancelled;
    IF v_ids IS NOT NULL THEN
        PERFORM swf.queue_remove_tasks(v_ids);
    END IF;
    PERFORM swf._notify(p_run, NULL, 'failed');
END $$;

-- Lock the run a task belongs to and return the task as it is under that lock. A retry may
-- move a running attempt to the new run between the first read and the lock: follow it.
-- A step's attempt is reported by whoever may run it: a local step by the process that
-- started the run (a client, or a worker running a task), a distributed one by a worker.
CREATE OR REPLACE FUNCTION swf._require_step_part(p_execution text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_execution = 'local' THEN
        PERFORM swf._require_part('run a local step', 'client', 'worker');
    ELSE
        PERFORM swf._require_part('run a distributed step', 'worker');
    END IF;
END $$;

CREATE OR REPLACE FUNCTION swf._lock_task(p_task uuid) RETURNS swf.step_tasks
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
            PERFORM swf._require_step_part(v_task.execution);
            RETURN v_task;
        END IF;
    END LOOP;
END $$;

-- Start a run: record it and its steps (a snapshot, so later edits of the flow do not
-- change it) and dispatch the root steps. p_steps is a JSON array of step objects
-- {name, depends_on, dependents, execution, task_name, queue, max_attempts,
--  retry_delay_ms, timeout_ms, resources, map_over, function_ref, condition, run_on_skip,
--  on_exhausted, wait_for, wait_until, wait_seconds} in definition order.
CREATE OR REPLACE FUNCTION swf.start_run(p_slug text, p_steps jsonb, p_input jsonb,
                              p_dynamic boolean DEFAULT false, p_hash text DEFAULT NULL,
                              p_retry_of uuid DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_flow  swf.flows;
    v_run   uuid;
    v_total integer := jsonb_array_length(p_steps);
    v_step  text;
BEGIN
    IF NOT p_dynamic THEN
        INSERT INTO swf.flows (slug, dynamic) VALUES (p_slug, false)
            ON CONFLICT (slug) DO NOTHING;
    END IF;
    SELECT * INTO v_flow FROM swf.flows WHERE slug = p_slug;
    IF NOT p_dynamic AND v_flow.dynamic IS FALSE
       AND v_flow.definition_hash IS DISTINCT FROM p_hash THEN
        -- A code-defined flow's catalogue entry follows the code: refresh it when it
        -- changed, under the row lock (two first runs of a new version must not both
        -- rewrite it), checking again once the lock is ours.
        SELECT * INTO v_flow FROM swf.flows WHERE slug = p_slug FOR UPDATE;
        IF v_flow.definition_hash IS DISTINCT FROM p_hash THEN
            DELETE FROM swf.flow_steps WHERE flow_id = v_flow.id;
            INSERT INTO swf.flow_steps (flow_id, step_name, step_index, depends_on, options)
            SELECT v_flow.id, s ->> 'name', idx::integer - 1,
                   ARRAY(SELECT jsonb_array_elements_text(s -> 'depends_on')),
                   s - 'name' - 'depends_on' - 'dependents' - 'function_ref' - 'condition'
              FROM jsonb_array_elements(p_steps) WITH ORDINALITY AS e(s, idx);
            UPDATE swf.flows SET definition_hash = p_hash WHERE id = v_flow.id;
        END IF;
    ELSE
        -- FOR SHARE: a concurrent delete_flow waits for this run to exist (then refuses).
        SELECT * INTO v_flow FROM swf.flows WHERE slug = p_slug FOR SHARE;
    END IF;
    IF v_flow.id IS NULL THEN
        RAISE EXCEPTION 'flow % does not exist', p_slug USING ERRCODE = 'no_data_found';
    END IF;
    IF v_flow.dynamic <> p_dynamic THEN
        RAISE EXCEPTION 'flow % is a % flow', p_slug,
            CASE WHEN v_flow.dynamic THEN 'dynamic' ELSE 'code-defined' END
            USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO swf.runs (flow_id, flow_slug, input, retry_of, total_steps, remaining_steps)
    VALUES (v_flow.id, p_slug, p_input, p_retry_of, v_total, v_total)
    RETURNING id INTO v_run;
    INSERT INTO swf.step_states (run_id, step_name, step_index, depends_on, dependents,
                                 remaining_deps, execution, task_name, queue, max_attempts,
                                 retry_delay_ms, timeout_ms, resources, map_over, function_ref,
                                 condition, run_on_skip, on_exhausted, wait_for, wait_until,
                                 wait_seconds)
    SELECT v_run, s ->> 'name', idx::integer - 1,
           ARRAY(SELECT jsonb_array_elements_text(s -> 'depends_on')),
           ARRAY(SELECT jsonb_array_elements_text(s -> 'dependents')),
           jsonb_array_length(s -> 'depends_on'),
           s ->> 'execution', s ->> 'task_name', s ->> 'queue',
           (s ->> 'max_attempts')::integer, (s ->> 'retry_delay_ms')::integer,
           (s ->> 'timeout_ms')::integer, coalesce(s -> 'resources', '{}'), s ->> 'map_over',
           s -> 'function_ref', s -> 'condition', coalesce((s ->> 'run_on_skip')::boolean, false),
           coalesce(s ->> 'on_exhausted', 'fail'), s ->> 'wait_for',
           (s ->> 'wait_until')::timestamptz, (s ->> 'wait_seconds')::double precision
      FROM jsonb_array_elements(p_steps) WITH ORDINALITY AS e(s, idx);
    PERFORM swf._notify(v_run, NULL, 'in_progress');
    FOR v_step IN SELECT step_name FROM swf.step_states
                   WHERE run_id = v_run AND remaining_deps = 0 ORDER BY step_index
    LOOP
        PERFORM swf._start_step(v_run, v_step);
    END LOOP;
    RETURN v_run;
END $$;
REVOKE EXECUTE ON FUNCTION swf.start_run(text, jsonb, jsonb, boolean, text, uuid) FROM PUBLIC;

-- A worker (or the local runner) is about to run a task: returns what it needs, or tells
-- it to skip. A message of a run that is no longer active ends its attempt (a redelivery
-- after its worker died).
CREATE OR REPLACE FUNCTION swf.start_task(p_task uuid) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
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
    PERFORM swf._require_step_part(v_task.execution);
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
    IF v_state.status = 'waiting' THEN  -- its sleep is over
        UPDATE swf.step_states SET status = 'started'
         WHERE run_id = v_task.run_id AND step_name = v_task.step_name;
        PERFORM swf._notify(v_task.run_id, v_task.step_name, 'started');
    END IF;
    SELECT jsonb_build_object('run', v_run.input)
           || coalesce(jsonb_object_agg(step_name, output), '{}'::jsonb)
      INTO v_input
      FROM swf.step_states
     WHERE run_id = v_task.run_id AND step_name = ANY (v_state.depends_on);
    IF v_state.map_over IS NOT NULL THEN
        v_input := v_input || jsonb_build_object('item', v_task.item, 'index', v_task.task_index);
    END IF;
    IF v_state.wait_for IS NOT NULL THEN
        v_input := v_input || jsonb_build_object(v_state.wait_for,
            (SELECT payload FROM swf.run_signals
              WHERE run_id = v_task.run_id AND name = v_state.wait_for));
    END IF;
    RETURN jsonb_build_object(
        'run_id', v_task.run_id, 'step', v_task.step_name, 'index', v_task.task_index,
        'attempt', v_task.attempt, 'task_name', v_state.task_name,
        'timeout_ms', v_state.timeout_ms, 'input', v_input, 'condition', v_state.condition);
END $$;
REVOKE EXECUTE ON FUNCTION swf.start_task(uuid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION swf.complete_task(p_task uuid, p_output jsonb) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_task      swf.step_tasks := swf._lock_task(p_task);
    v_remaining integer;
    v_map       text;
    v_output    jsonb;
BEGIN
    IF v_task.task_id IS NULL OR v_task.status <> 'started' THEN
        RETURN 'ignored';  -- only a started attempt has an output to report
    END IF;
    UPDATE swf.step_tasks
       SET status = 'completed', output = p_output, completed_at = now(), deadline = NULL
     WHERE task_id = p_task AND status = 'started';
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
REVOKE EXECUTE ON FUNCTION swf.complete_task(uuid, jsonb) FROM PUBLIC;

-- A task failed: retried after a backoff capped at swf.max_retry_delay_ms(), or its step
-- and run fail when its attempts are used up.
CREATE OR REPLACE FUNCTION swf.fail_task(p_task uuid, p_error text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
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
    IF v_state.on_exhausted = 'skip' THEN
        PERFORM swf._skip_step(v_task.run_id, v_task.step_name,
            format('skipped after %s attempt(s): %s', v_task.attempt, p_error));
        RETURN 'skipped';
    END IF;
    UPDATE swf.step_states SET status = 'failed', error = p_error, completed_at = now()
     WHERE run_id = v_task.run_id AND step_name = v_task.step_name;
    PERFORM swf._notify(v_task.run_id, v_task.step_name, 'failed');
    PERFORM swf._fail_run(v_task.run_id, v_task.step_name,
        CASE WHEN v_state.map_over IS NULL THEN p_error
             ELSE format('item %s: %s', v_task.task_index, p_error) END);
    RETURN 'failed';
END $$;
REVOKE EXECUTE ON FUNCTION swf.fail_task(uuid, text) FROM PUBLIC;

-- A started attempt's step is skipped: its predicate (run_if / skip_if, evaluated where the
-- step runs) said so. 'skipped', or 'ignored' for a stale report.
CREATE OR REPLACE FUNCTION swf.skip_task(p_task uuid, p_reason text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_task swf.step_tasks := swf._lock_task(p_task);
BEGIN
    IF v_task.task_id IS NULL OR v_task.status <> 'started' THEN
        RETURN 'ignored';
    END IF;
    UPDATE swf.step_tasks SET status = 'skipped', completed_at = now(), deadline = NULL,
                              error = p_reason
     WHERE task_id = p_task;
    PERFORM swf._skip_step(v_task.run_id, v_task.step_name, p_reason);
    RETURN 'skipped';
END $$;
REVOKE EXECUTE ON FUNCTION swf.skip_task(uuid, text) FROM PUBLIC;

-- A signal to a run: kept (one per name; a later one replaces it) until the steps that wait
-- for it start; those waiting now start at once. P0002 for an unknown run, 22023 when no
-- step of the run waits for p_name, 55000 when the run has finished. Returns how many
-- waiting steps it started.
CREATE OR REPLACE FUNCTION swf.signal_run(p_run uuid, p_name text, p_payload jsonb)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_run   swf.runs;
    v_step  text;
    v_count integer := 0;
BEGIN
    PERFORM swf._require_part('signal a run', 'client');
    v_run := swf._lock_run(p_run);
    IF NOT EXISTS (SELECT 1 FROM swf.step_states WHERE run_id = p_run AND wait_for = p_name) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('run %s has no step waiting for the signal %L (waited for: %s)',
                             p_run, p_name,
                             coalesce((SELECT string_agg(DISTINCT quote_literal(wait_for), ', ')
                                         FROM swf.step_states
                                        WHERE run_id = p_run AND wait_for IS NOT NULL),
                                      'none'));
    END IF;
    IF v_run.status NOT IN ('in_progress', 'paused') THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('run %s is %s: it takes no more signals', p_run, v_run.status);
    END IF;
    INSERT INTO swf.run_signals (run_id, name, payload) VALUES (p_run, p_name, p_payload)
        ON CONFLICT (run_id, name) DO UPDATE SET payload = EXCLUDED.payload, sent_at = now();
    FOR v_step IN SELECT step_name FROM swf.step_states
                   WHERE run_id = p_run AND wait_for = p_name AND status = 'waiting'
                     AND NOT EXISTS (SELECT 1 FROM swf.step_tasks t
                                      WHERE t.run_id = p_run
                                        AND t.step_name = step_states.step_name)
                   ORDER BY step_index
    LOOP
        PERFORM swf._start_step(p_run, v_step);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END $$;
REVOKE EXECUTE ON FUNCTION swf.signal_run(uuid, text, jsonb) FROM PUBLIC;

-- The distributed attempts of a run that are running now (to revoke when the run failed).
CREATE OR REPLACE FUNCTION swf.running_tasks(p_run uuid) RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
    SELECT coalesce(array_agg(task_id::text ORDER BY task_id), '{}') FROM swf.step_tasks
     WHERE run_id = p_run AND status = 'started' AND execution = 'distributed';
$$;
REVOKE EXECUTE ON FUNCTION swf.running_tasks(uuid) FROM PUBLIC;

-- A step task was revoked on its worker (the worker reports it): its attempt ends. In an
-- active run that is a failed attempt (retried as usual); otherwise it is cancelled.
CREATE OR REPLACE FUNCTION swf.abandon_task(p_task uuid, p_reason text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
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
REVOKE EXECUTE ON FUNCTION swf.abandon_task(uuid, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION swf.expire_tasks(p_run uuid DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
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
REVOKE EXECUTE ON FUNCTION swf.expire_tasks(uuid) FROM PUBLIC;

-- The local runner's claim: start up to p_limit queued local tasks of a run that are due.
CREATE OR REPLACE FUNCTION swf.claim_local_tasks(p_run uuid, p_limit integer)
RETURNS TABLE (task_id uuid, task jsonb) LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
    SELECT c.task_id, swf.start_task(c.task_id)
      FROM (SELECT t.task_id FROM swf.step_tasks t
             WHERE t.run_id = p_run AND t.status = 'queued' AND t.execution = 'local'
               AND t.available_at <= now()
             ORDER BY t.available_at, t.task_index
             LIMIT p_limit
               FOR UPDATE SKIP LOCKED) c;
$$;
REVOKE EXECUTE ON FUNCTION swf.claim_local_tasks(uuid, integer) FROM PUBLIC;

-- Leases of local runs. The process that drives a run's local steps holds its lease
-- (runs.lease_owner until runs.lease_until) and renews it as it drives (swf.drive_run); a run
-- whose lease ran out while local work is left fails with the reason (swf._expire_lease,
-- called by the workers' sweep, by any waiter's swf.run_tick and before a retry), ready for
-- retry. Another process takes a run over with swf.drive_run(..., p_take): the attempts the
-- previous driver had started fail (and are retried), so no local step runs twice at once.
CREATE OR REPLACE FUNCTION swf._expire_lease(p_run uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_run swf.runs;
BEGIN
    SELECT * INTO v_run FROM swf.runs
     WHERE id = p_run AND status = 'in_progress' AND lease_until < now();
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT * INTO v_run FROM swf.runs WHERE id = p_run FOR UPDATE;
    IF v_run.status <> 'in_progress' OR NOT v_run.lease_until < now()
       OR NOT EXISTS (SELECT 1 FROM swf.step_states
                       WHERE run_id = p_run AND execution = 'local'
                         AND status IN ('created', 'ready', 'started')) THEN
        RETURN false;
    END IF;
    UPDATE swf.step_tasks SET status = 'failed', completed_at = now(), deadline = NULL,
                              error = 'its driver stopped'
     WHERE run_id = p_run AND execution = 'local' AND status = 'started';
    PERFORM swf._fail_run(p_run, NULL, format(
        'nobody drives its local steps: the lease of %s ran out at %s (the process stopped '
        'or lost the database); retry the run, or take it over with Executor.resume',
        v_run.lease_owner, v_run.lease_until));
    RETURN true;
END $$;

-- The driver of a run's local steps takes or renews its lease (p_lease_ms), then ticks the
-- run (swf.run_tick). A lease another live driver holds is not taken unless p_take; then
-- {"held_by": owner, "until": time} is returned instead of the run's state.
CREATE OR REPLACE FUNCTION swf.drive_run(p_run uuid, p_owner text, p_lease_ms integer,
                                         p_take boolean DEFAULT false)
RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_run  swf.runs;
    v_task uuid;
BEGIN
    PERFORM swf._require_part('drive a run''s local steps', 'client', 'worker');
    SELECT * INTO v_run FROM swf.runs WHERE id = p_run;
    IF FOUND AND v_run.status IN ('in_progress', 'paused') THEN
        IF v_run.lease_owner IS DISTINCT FROM p_owner THEN
            SELECT * INTO v_run FROM swf.runs WHERE id = p_run FOR UPDATE;
            IF v_run.lease_owner IS NOT NULL AND v_run.lease_owner <> p_owner
               AND v_run.lease_until >= now() AND NOT p_take THEN
                RETURN jsonb_build_object('held_by', v_run.lease_owner,
                                          'until', v_run.lease_until);
            END IF;
            UPDATE swf.runs
               SET lease_owner = p_owner,
                   lease_until = now() + make_interval(secs => p_lease_ms / 1000.0)
             WHERE id = p_run;
            IF v_run.lease_owner IS NOT NULL THEN
                FOR v_task IN SELECT task_id FROM swf.step_tasks
                               WHERE run_id = p_run AND execution = 'local'
                                 AND status = 'started' ORDER BY task_id
                LOOP
                    PERFORM swf.fail_task(v_task, format('its driver %s was replaced by %s',
                                                         v_run.lease_owner, p_owner));
                END LOOP;
            END IF;
        ELSIF v_run.lease_until < now() + make_interval(secs => p_lease_ms / 2000.0) THEN
            UPDATE swf.runs
               SET lease_until = now() + make_interval(secs => p_lease_ms / 1000.0)
             WHERE id = p_run AND lease_owner = p_owner;
        END IF;
    END IF;
    RETURN swf.run_tick(p_run);
END $$;
REVOKE EXECUTE ON FUNCTION swf.drive_run(uuid, text, integer, boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION swf.run_tick(p_run uuid) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_run  swf.runs;
    v_next timestamptz;
BEGIN
    PERFORM swf.expire_tasks(p_run);
    PERFORM swf._expire_lease(p_run);
    SELECT * INTO v_run FROM swf.runs WHERE id = p_run;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT least(
        (SELECT min(deadline + swf.caller_expiry_grace(execution)) FROM swf.step_tasks
          WHERE run_id = p_run AND status = 'started'),
        (SELECT min(available_at) FROM swf.step_tasks
          WHERE run_id = p_run AND status = 'queued' AND execution = 'local'),
        -- a waiter sees a lapsed lease fail the run when it lapses
        CASE WHEN v_run.status = 'in_progress' THEN v_run.lease_until END)
      INTO v_next;
    RETURN jsonb_build_object(
        'status', v_run.status, 'output', v_run.output, 'error', v_run.error,
        'failed_step', v_run.failed_step,
        'wake_in_ms', CASE WHEN v_next IS NULL THEN NULL
                           ELSE greatest(0, extract(epoch FROM v_next - now()) * 1000) END);
END $$;
REVOKE EXECUTE ON FUNCTION swf.run_tick(uuid) FROM PUBLIC;

-- The workers' sweep: fail every attempt past its deadline, in one transaction, by one
-- sweeper at a time (others return NULL at once). Returns {"expired": n, "revoke": [ids]}:
-- the expired attempts and the running attempts of the runs this sweep failed, for the
-- caller to revoke (terminate).
CREATE OR REPLACE FUNCTION swf.sweep_timeouts() RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_task    record;
    v_count   integer := 0;
    v_failed  uuid[] := '{}';
    v_expired text[] := '{}';
    v_out     text;
BEGIN
    PERFORM swf._require_part('sweep overdue steps', 'worker');
    IF NOT pg_try_advisory_xact_lock(hashtext('swf-celery:sweep'), 0) THEN
        RETURN NULL;
    END IF;
    FOR v_task IN SELECT id FROM swf.runs
                   WHERE status = 'in_progress' AND lease_until < now() ORDER BY id
    LOOP
        IF swf._expire_lease(v_task.id) THEN
            v_failed := v_failed || v_task.id;
        END IF;
    END LOOP;
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
REVOKE EXECUTE ON FUNCTION swf.sweep_timeouts() FROM PUBLIC;

-- The engine's hook on the broker's dead letters (swf.dead_letters, written by the
-- transport's swf._queue_bury): a dead-lettered workflow step message (reject without
-- requeue, too many deliveries, malformed) fails its attempt, so its run does not wait for it
-- forever. Never raises: dead-lettering goes on even if the coordinator refuses.
CREATE OR REPLACE FUNCTION swf.fail_dead_step() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
BEGIN
    BEGIN
        PERFORM swf.fail_task((NEW.message #>> '{headers,id}')::uuid,
                              'step message dead-lettered: ' || NEW.reason);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'swf: could not fail the attempt of dead-lettered step task %: %',
            NEW.message #>> '{headers,id}', SQLERRM;
    END;
    RETURN NULL;
END $$;
REVOKE EXECUTE ON FUNCTION swf.fail_dead_step() FROM PUBLIC;
CREATE OR REPLACE TRIGGER swf_fail_dead_steps AFTER INSERT ON swf.dead_letters
    FOR EACH ROW WHEN (NEW.message #>> '{headers,task}' = 'swf_celery.step')
    EXECUTE FUNCTION swf.fail_dead_step();
