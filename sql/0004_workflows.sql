-- 0004: the workflow coordinator. Flows and their steps, runs, step states and step tasks,
-- and the stored functions that move them between states. Every transition of a run takes
-- the run's row lock first, so transitions of one run are serialised (no lost decrement,
-- no deadlock between two completing steps) and runs never block each other.
--
-- Step task ids are the Celery task ids of their messages. An attempt that is retried gets
-- a new id, so a late or duplicate report about an old attempt matches nothing and is
-- ignored: that is what makes completion idempotent.
--
-- Distributed steps are dispatched with swf.queue_send() (the broker's SQL, same database,
-- same transaction); local steps are left 'queued' for the process that started the run.
-- Every transition NOTIFYs channel swf_workflow_events with {"run_id", "step", "status"}.

CREATE TABLE swf.flows (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug            text NOT NULL UNIQUE,
    dynamic         boolean NOT NULL,
    definition_hash text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE swf.flow_steps (
    flow_id     uuid NOT NULL REFERENCES swf.flows (id) ON DELETE CASCADE,
    step_name   text NOT NULL,
    step_index  integer NOT NULL,
    depends_on  text[] NOT NULL DEFAULT '{}',
    options     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flow_id, step_name)
);

CREATE TABLE swf.runs (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    flow_id         uuid REFERENCES swf.flows (id) ON DELETE SET NULL,
    flow_slug       text NOT NULL,
    status          text NOT NULL DEFAULT 'in_progress'
                    CHECK (status IN ('in_progress', 'paused', 'completed', 'failed', 'cancelled')),
    input           jsonb,
    output          jsonb,
    error           text,
    failed_step     text,
    retry_of        uuid REFERENCES swf.runs (id) ON DELETE SET NULL,
    total_steps     integer NOT NULL,
    remaining_steps integer NOT NULL,
    inserted_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX runs_status_inserted ON swf.runs (status, inserted_at);
CREATE INDEX runs_slug_inserted ON swf.runs (flow_slug, inserted_at);
CREATE INDEX runs_flow ON swf.runs (flow_id);
CREATE INDEX runs_retry_of ON swf.runs (retry_of);

CREATE TABLE swf.step_states (
    run_id          uuid NOT NULL REFERENCES swf.runs (id) ON DELETE CASCADE,
    step_name       text NOT NULL,
    step_index      integer NOT NULL,
    depends_on      text[] NOT NULL,
    dependents      text[] NOT NULL,
    remaining_deps  integer NOT NULL,
    -- created: waiting for dependencies; ready: dependencies done but the run is paused;
    -- started: its tasks are dispatched; then completed / failed / cancelled.
    status          text NOT NULL DEFAULT 'created'
                    CHECK (status IN ('created', 'ready', 'started', 'completed', 'failed',
                                      'cancelled')),
    execution       text NOT NULL CHECK (execution IN ('distributed', 'local')),
    task_name       text,
    queue           text,
    max_attempts    integer NOT NULL CHECK (max_attempts >= 1),
    retry_delay_ms  integer NOT NULL,
    timeout_ms      integer,
    resources       jsonb NOT NULL DEFAULT '{}',
    map_over        text,
    task_count      integer,
    remaining_tasks integer,
    output          jsonb,
    error           text,
    started_at      timestamptz,
    completed_at    timestamptz,
    PRIMARY KEY (run_id, step_name)
);

CREATE TABLE swf.step_tasks (
    run_id       uuid NOT NULL,
    step_name    text NOT NULL,
    task_index   integer NOT NULL,
    task_id      uuid NOT NULL UNIQUE,
    execution    text NOT NULL,
    attempt      integer NOT NULL DEFAULT 1,
    status       text NOT NULL DEFAULT 'queued'
                 -- paused: was queued when its run was paused; resume dispatches it anew
                 CHECK (status IN ('queued', 'paused', 'started', 'completed', 'failed',
                                   'cancelled')),
    item         jsonb,
    message_id   bigint,
    output       jsonb,
    error        text,
    queued_at    timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    deadline     timestamptz,
    completed_at timestamptz,
    PRIMARY KEY (run_id, step_name, task_index),
    FOREIGN KEY (run_id, step_name) REFERENCES swf.step_states (run_id, step_name)
        ON DELETE CASCADE
);
CREATE INDEX step_tasks_deadline ON swf.step_tasks (run_id, deadline) WHERE status = 'started';
CREATE INDEX step_tasks_local ON swf.step_tasks (run_id, available_at)
    WHERE status = 'queued' AND execution = 'local';


CREATE FUNCTION swf._notify(p_run uuid, p_step text, p_status text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('swf_workflow_events',
                     json_build_object('run_id', p_run, 'step', p_step, 'status', p_status)::text);
$$;


-- The Celery protocol-2 message of one step task, in the form kombu's virtual
-- Channel._put receives: the body is [args, kwargs, embed] as base64 JSON. The task is the
-- step runner (swf_celery.step); "shadow" shows the user's task name in logs and monitors.
CREATE FUNCTION swf._step_message(p_task_id uuid, p_run uuid, p_step text, p_index integer,
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


-- Send the queued distributed tasks of a step (all of them, or one by task id).
CREATE FUNCTION swf._dispatch(p_run uuid, p_step text, p_task uuid, p_delay_s integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE swf.step_tasks t
       SET message_id = swf.queue_send(
               s.queue,
               swf._step_message(t.task_id, t.run_id, t.step_name, t.task_index, t.attempt,
                                 s.task_name, s.queue, s.timeout_ms),
               p_delay_s)
      FROM swf.step_states s
     WHERE s.run_id = t.run_id AND s.step_name = t.step_name
       AND t.run_id = p_run AND t.step_name = p_step AND t.status = 'queued'
       AND s.execution = 'distributed'
       AND (p_task IS NULL OR t.task_id = p_task);
END $$;


-- A step whose dependencies are all done: create its tasks (one, or one per map item)
-- and dispatch them; on a paused run it only becomes 'ready'.
CREATE FUNCTION swf._start_step(p_run uuid, p_step text) RETURNS void
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
    -- Tasks a retried run reused (finished items of a map step) are already there: only
    -- the missing ones are created, and only those remain to be done.
    INSERT INTO swf.step_tasks (run_id, step_name, task_index, task_id, execution, item)
    SELECT p_run, p_step, i, gen_random_uuid(), v_state.execution,
           CASE WHEN v_items IS NULL THEN NULL ELSE v_items -> i END
      FROM generate_series(0, v_count - 1) AS i
        ON CONFLICT (run_id, step_name, task_index) DO NOTHING;
    GET DIAGNOSTICS v_left = ROW_COUNT;
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


-- A step's output is final: store it, let dependents whose last dependency this was start,
-- and complete the run when it was the last step.
CREATE FUNCTION swf._complete_step(p_run uuid, p_step text, p_output jsonb) RETURNS void
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


-- The run failed at p_step: mark it, cancel its queued tasks and remove their messages.
CREATE FUNCTION swf._fail_run(p_run uuid, p_step text, p_error text) RETURNS void
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


-- Start a run: record it and its steps (a snapshot, so later edits of the flow do not
-- change it) and dispatch the root steps. p_steps is a JSON array of step objects
-- {name, depends_on, dependents, execution, task_name, queue, max_attempts,
--  retry_delay_ms, timeout_ms, resources, map_over} in definition order.
CREATE FUNCTION swf.start_run(p_slug text, p_steps jsonb, p_input jsonb,
                              p_dynamic boolean DEFAULT false, p_hash text DEFAULT NULL,
                              p_retry_of uuid DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql AS $$
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
                   s - 'name' - 'depends_on' - 'dependents'
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
                                 retry_delay_ms, timeout_ms, resources, map_over)
    SELECT v_run, s ->> 'name', idx::integer - 1,
           ARRAY(SELECT jsonb_array_elements_text(s -> 'depends_on')),
           ARRAY(SELECT jsonb_array_elements_text(s -> 'dependents')),
           jsonb_array_length(s -> 'depends_on'),
           s ->> 'execution', s ->> 'task_name', s ->> 'queue',
           (s ->> 'max_attempts')::integer, (s ->> 'retry_delay_ms')::integer,
           (s ->> 'timeout_ms')::integer, coalesce(s -> 'resources', '{}'), s ->> 'map_over'
      FROM jsonb_array_elements(p_steps) WITH ORDINALITY AS e(s, idx);
    PERFORM swf._notify(v_run, NULL, 'in_progress');
    FOR v_step IN SELECT step_name FROM swf.step_states
                   WHERE run_id = v_run AND remaining_deps = 0 ORDER BY step_index
    LOOP
        PERFORM swf._start_step(v_run, v_step);
    END LOOP;
    RETURN v_run;
END $$;


-- A worker (or the local runner) is about to run a task. Returns what the step function
-- needs, or NULL when the task must not run: unknown or superseded attempt, already
-- finished (a duplicate delivery), or its run is no longer active.
CREATE FUNCTION swf.start_task(p_task uuid) RETURNS jsonb
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


-- A task succeeded. Returns 'completed', or 'ignored' for a report that matches no live
-- attempt (duplicate delivery, superseded attempt, finished run).
CREATE FUNCTION swf.complete_task(p_task uuid, p_output jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_task      swf.step_tasks;
    v_remaining integer;
    v_map       text;
    v_output    jsonb;
BEGIN
    SELECT * INTO v_task FROM swf.step_tasks WHERE task_id = p_task;
    IF NOT FOUND THEN
        RETURN 'ignored';
    END IF;
    PERFORM 1 FROM swf.runs WHERE id = v_task.run_id FOR UPDATE;
    UPDATE swf.step_tasks
       SET status = 'completed', output = p_output, completed_at = now(), deadline = NULL
     WHERE task_id = p_task AND status IN ('queued', 'started');
    IF NOT FOUND THEN
        RETURN 'ignored';
    END IF;
    SELECT map_over INTO v_map FROM swf.step_states
     WHERE run_id = v_task.run_id AND step_name = v_task.step_name;
    IF v_map IS NULL THEN
        -- One task, one step: complete it directly (_complete_step checks it is started).
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


-- A task failed (raised, timed out, or its output was unusable). Retries with exponential
-- backoff (retry_delay * 2^(attempt-1), through the broker's message delay) until
-- max_attempts; then the step and the run fail. Returns 'retrying', 'failed' or 'ignored'.
CREATE FUNCTION swf.fail_task(p_task uuid, p_error text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_task  swf.step_tasks;
    v_state swf.step_states;
    v_run   swf.runs;
    v_delay_ms bigint;
    v_new   uuid := gen_random_uuid();
BEGIN
    SELECT * INTO v_task FROM swf.step_tasks WHERE task_id = p_task;
    IF NOT FOUND THEN
        RETURN 'ignored';
    END IF;
    SELECT * INTO v_run FROM swf.runs WHERE id = v_task.run_id FOR UPDATE;
    SELECT * INTO v_task FROM swf.step_tasks WHERE task_id = p_task FOR UPDATE;
    IF v_task.status NOT IN ('queued', 'started') THEN
        RETURN 'ignored';
    END IF;
    SELECT * INTO v_state FROM swf.step_states
     WHERE run_id = v_task.run_id AND step_name = v_task.step_name;
    IF v_run.status IN ('in_progress', 'paused') AND v_task.attempt < v_state.max_attempts THEN
        v_delay_ms := v_state.retry_delay_ms::bigint * (2 ^ (v_task.attempt - 1))::bigint;
        UPDATE swf.step_tasks
           SET task_id = v_new, attempt = attempt + 1, error = p_error,
               -- on a paused run the next attempt waits for resume
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


-- Fail the started tasks of a run (or of every run) whose attempt is over its timeout.
CREATE FUNCTION swf.expire_tasks(p_run uuid DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_task  record;
    v_count integer := 0;
BEGIN
    FOR v_task IN
        SELECT t.task_id, s.timeout_ms FROM swf.step_tasks t
          JOIN swf.step_states s ON s.run_id = t.run_id AND s.step_name = t.step_name
         WHERE t.status = 'started' AND t.deadline < now()
           AND (p_run IS NULL OR t.run_id = p_run)
         ORDER BY t.run_id, t.task_id  -- one lock order for concurrent sweeps
    LOOP
        IF swf.fail_task(v_task.task_id,
                         format('timed out after %s s', trim_scale(v_task.timeout_ms / 1000.0))) <> 'ignored'
        THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END $$;


-- The local runner's claim: start up to p_limit queued local tasks of a run that are due.
CREATE FUNCTION swf.claim_local_tasks(p_run uuid, p_limit integer)
RETURNS TABLE (task_id uuid, task jsonb) LANGUAGE sql AS $$
    SELECT c.task_id, swf.start_task(c.task_id)
      FROM (SELECT t.task_id FROM swf.step_tasks t
             WHERE t.run_id = p_run AND t.status = 'queued' AND t.execution = 'local'
               AND t.available_at <= now()
             ORDER BY t.available_at, t.task_index
             LIMIT p_limit
               FOR UPDATE SKIP LOCKED) c;
$$;


-- What a waiting caller needs after an event: the run's state and when to look again
-- (the next attempt deadline or delayed local retry), after expiring overdue attempts.
CREATE FUNCTION swf.run_tick(p_run uuid) RETURNS jsonb
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
        (SELECT min(deadline) FROM swf.step_tasks WHERE run_id = p_run AND status = 'started'),
        (SELECT min(available_at) FROM swf.step_tasks
          WHERE run_id = p_run AND status = 'queued' AND execution = 'local'))
      INTO v_next;
    RETURN jsonb_build_object(
        'status', v_run.status, 'output', v_run.output, 'error', v_run.error,
        'failed_step', v_run.failed_step,
        'wake_in_ms', CASE WHEN v_next IS NULL THEN NULL
                           ELSE greatest(0, extract(epoch FROM v_next - now()) * 1000) END);
END $$;
