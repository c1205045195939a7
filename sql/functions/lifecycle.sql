-- Run lifecycle: pause, resume, cancel, retry, status. Like every transition of the state
-- machine (workflows.sql), each takes the run's row lock first, so it is serialised with the
-- completions and failures of the run's steps: every race has one outcome, decided by lock
-- order.
--
-- Errors: SQLSTATE P0002 (no_data_found) for an unknown run, 55000
-- (object_not_in_prerequisite_state) for an operation that does not fit the run's state.
CREATE OR REPLACE FUNCTION swf._lock_run(p_run uuid) RETURNS swf.runs
LANGUAGE plpgsql AS $$
DECLARE
    v_run swf.runs;
BEGIN
    SELECT * INTO v_run FROM swf.runs WHERE id = p_run FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('run %s does not exist', p_run);
    END IF;
    RETURN v_run;
END $$;

-- Pause: queued tasks are held (their messages removed from the broker), steps that become
-- ready wait ('ready'), running tasks finish and their results are kept. Pausing a paused
-- run does nothing.
CREATE OR REPLACE FUNCTION swf.pause_run(p_run uuid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_run swf.runs := swf._lock_run(p_run);
    v_ids text[];
BEGIN
    PERFORM swf._require_part('pause a run');
    IF v_run.status = 'paused' THEN
        RETURN 'paused';
    END IF;
    IF v_run.status <> 'in_progress' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('run %s is %s: only a run in progress can be paused', p_run,
                             v_run.status);
    END IF;
    UPDATE swf.runs SET status = 'paused', updated_at = now() WHERE id = p_run;
    WITH held AS (
        UPDATE swf.step_tasks SET status = 'paused'
         WHERE run_id = p_run AND status = 'queued'
        RETURNING task_id, execution)
    SELECT array_agg(task_id::text) FILTER (WHERE execution = 'distributed') INTO v_ids
      FROM held;
    IF v_ids IS NOT NULL THEN
        -- A message a worker already holds cannot be removed: swf.start_task refuses it
        -- (its task is 'paused'), and resume sends the task again under a new id.
        PERFORM swf.queue_remove_tasks(v_ids);
    END IF;
    PERFORM swf._notify(p_run, NULL, 'paused');
    RETURN 'paused';
END $$;
REVOKE EXECUTE ON FUNCTION swf.pause_run(uuid) FROM PUBLIC;

-- Resume: held tasks are dispatched again (each under a new Celery task id, so a stale copy
-- is ignored) and ready steps start. Resuming a run in progress does nothing, so of two
-- concurrent resumes the second finds nothing to dispatch.
CREATE OR REPLACE FUNCTION swf.resume_run(p_run uuid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_run  swf.runs := swf._lock_run(p_run);
    v_task record;
    v_step text;
BEGIN
    PERFORM swf._require_part('resume a run');
    IF v_run.status = 'in_progress' THEN
        RETURN 'in_progress';
    END IF;
    IF v_run.status <> 'paused' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('run %s is %s: only a paused run can be resumed', p_run,
                             v_run.status);
    END IF;
    UPDATE swf.runs SET status = 'in_progress', updated_at = now() WHERE id = p_run;
    PERFORM swf._notify(p_run, NULL, 'in_progress');
    FOR v_task IN
        UPDATE swf.step_tasks
           SET task_id = gen_random_uuid(), status = 'queued', message_id = NULL,
               available_at = greatest(available_at, now())
         WHERE run_id = p_run AND status = 'paused'
        RETURNING task_id, step_name, execution, available_at
    LOOP
        IF v_task.execution = 'distributed' THEN
            PERFORM swf._dispatch(p_run, v_task.step_name, v_task.task_id,
                ceil(extract(epoch FROM v_task.available_at - now()))::integer);
        END IF;
    END LOOP;
    FOR v_step IN SELECT step_name FROM swf.step_states
                   WHERE run_id = p_run AND status = 'ready' ORDER BY step_index
    LOOP
        PERFORM swf._start_step(p_run, v_step);
    END LOOP;
    RETURN 'in_progress';
END $$;
REVOKE EXECUTE ON FUNCTION swf.resume_run(uuid) FROM PUBLIC;

-- Cancel: the run and its unfinished steps become 'cancelled' with the reason, queued
-- messages are removed from the broker, late reports of running tasks are ignored. Returns
-- the Celery task ids of distributed tasks that were running, for the caller to revoke.
-- A finished run is refused unless p_force (then it is marked cancelled all the same).
CREATE OR REPLACE FUNCTION swf.cancel_run(p_run uuid, p_reason text, p_force boolean)
RETURNS text[] LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_run     swf.runs := swf._lock_run(p_run);
    v_queued  text[];
    v_running text[];
BEGIN
    PERFORM swf._require_part('cancel a run');
    IF v_run.status IN ('completed', 'failed', 'cancelled') AND NOT p_force THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('run %s is already %s: pass force=True to mark it cancelled',
                             p_run, v_run.status);
    END IF;
    UPDATE swf.runs
       SET status = 'cancelled', error = p_reason, updated_at = now(),
           finished_at = coalesce(finished_at, now())
     WHERE id = p_run;
    WITH old AS (
        SELECT task_id, status, execution FROM swf.step_tasks
         WHERE run_id = p_run AND status IN ('queued', 'paused', 'started')
           FOR UPDATE),
    cancelled AS (
        UPDATE swf.step_tasks t SET status = 'cancelled', deadline = NULL
          FROM old WHERE t.task_id = old.task_id
        RETURNING old.task_id, old.status, old.execution)
    SELECT array_agg(task_id::text) FILTER (WHERE status = 'queued' AND execution = 'distributed'),
           array_agg(task_id::text) FILTER (WHERE status = 'started' AND execution = 'distributed')
      INTO v_queued, v_running
      FROM cancelled;
    IF v_queued IS NOT NULL THEN
        PERFORM swf.queue_remove_tasks(v_queued);
    END IF;
    UPDATE swf.step_states SET status = 'cancelled', completed_at = now()
     WHERE run_id = p_run AND status IN ('created', 'ready', 'waiting', 'started');
    PERFORM swf._notify(p_run, NULL, 'cancelled');
    RETURN coalesce(v_running, '{}');
END $$;
REVOKE EXECUTE ON FUNCTION swf.cancel_run(uuid, text, boolean) FROM PUBLIC;

-- Copy run p_run's steps into the new run p_new (retry_run, replay_run): a completed or
-- skipped step not named in p_rerun keeps its outcome (p_rerun NULL: no step does); every
-- other step starts over as 'created', its dependencies counted again.
CREATE OR REPLACE FUNCTION swf._copy_steps(p_run uuid, p_new uuid, p_rerun text[])
RETURNS void
LANGUAGE sql AS $$
    WITH old AS (
        SELECT s.*, (s.status IN ('completed', 'skipped') AND p_rerun IS NOT NULL
                     AND s.step_name <> ALL (p_rerun)) AS kept
          FROM swf.step_states s WHERE s.run_id = p_run)
    INSERT INTO swf.step_states (run_id, step_name, step_index, depends_on, dependents,
                                 remaining_deps, status, execution, task_name, queue,
                                 max_attempts, retry_delay_ms, timeout_ms, resources, map_over,
                                 function_ref, condition, run_on_skip, on_exhausted, wait_for,
                                 wait_until, wait_seconds, error,
                                 task_count, remaining_tasks, output, started_at, completed_at)
    SELECT p_new, s.step_name, s.step_index, s.depends_on, s.dependents,
           (SELECT count(*) FROM old d WHERE d.step_name = ANY (s.depends_on) AND NOT d.kept),
           CASE WHEN s.kept THEN s.status ELSE 'created' END,
           s.execution, s.task_name, s.queue, s.max_attempts, s.retry_delay_ms, s.timeout_ms,
           s.resources, s.map_over, s.function_ref, s.condition, s.run_on_skip, s.on_exhausted,
           s.wait_for, s.wait_until, s.wait_seconds,
           CASE WHEN s.kept AND s.status = 'skipped' THEN s.error END,
           CASE WHEN s.kept AND s.status = 'completed' THEN s.task_count END,
           CASE WHEN s.kept THEN 0 END,
           CASE WHEN s.kept AND s.status = 'completed' THEN s.output END,
           CASE WHEN s.kept AND s.status = 'completed' THEN s.started_at END,
           CASE WHEN s.kept THEN s.completed_at END
      FROM old s
$$;

-- Retry a failed or cancelled run: a new run linked to it (retry_of), reusing the outputs of
-- completed steps (p_reuse) or starting over. The attempts of the old run still running are
-- not run twice: with p_reuse they are adopted by the new run (their reports complete the
-- new run's steps); without it they are cancelled and returned for the caller to revoke.
-- Returns {"run_id": new id, "revoke": [task ids]}.
CREATE OR REPLACE FUNCTION swf.retry_run(p_run uuid, p_reuse boolean) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_old    swf.runs := swf._lock_run(p_run);
    v_new    uuid;
    v_reused integer;
    v_step   text;
    v_revoke text[];
BEGIN
    PERFORM swf._require_part('retry a run');
    IF swf._expire_lease(p_run) THEN  -- nobody drives it: failed now, so it can be retried
        SELECT * INTO v_old FROM swf.runs WHERE id = p_run;
    END IF;
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
    PERFORM swf._copy_steps(p_run, v_new, CASE WHEN p_reuse THEN '{}'::text[] END);
    -- Signals sent to the old run are kept for the new one.
    INSERT INTO swf.run_signals (run_id, name, payload, sent_at)
    SELECT v_new, name, payload, sent_at FROM swf.run_signals WHERE run_id = p_run;
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
     WHERE run_id = v_new AND status IN ('completed', 'skipped');
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
REVOKE EXECUTE ON FUNCTION swf.retry_run(uuid, boolean) FROM PUBLIC;

-- The status view of one run: its steps with their progress and first error, each step's
-- overdue attempts (started and past their deadline: the sweep fails them next) and the
-- run's "overdue" flag.
CREATE OR REPLACE FUNCTION swf.run_status(p_run uuid) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'run_id', r.id, 'workflow_slug', r.flow_slug, 'status', r.status,
        'input', r.input, 'output', r.output, 'error', r.error, 'failed_step', r.failed_step,
        'retry_of', r.retry_of,
        'retried_by', (SELECT n.id FROM swf.runs n WHERE n.retry_of = r.id
                        ORDER BY n.inserted_at LIMIT 1),
        'replay_of', r.replay_of,
        'replays', coalesce((SELECT jsonb_agg(n.id ORDER BY n.inserted_at) FROM swf.runs n
                              WHERE n.replay_of = r.id), '[]'::jsonb),
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

-- Replay a finished run from one of its steps: a new run (replay_of) that reuses the outputs
-- of every step not downstream of p_from (map items included) and runs p_from and everything
-- after it again, on the old input or on p_input (p_new_input). 22023 for an unknown step,
-- 55000 for a run not finished. Returns the new run id.
CREATE OR REPLACE FUNCTION swf.replay_run(p_run uuid, p_from text, p_input jsonb,
                                          p_new_input boolean) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_old    swf.runs;
    v_new    uuid;
    v_again  text[];
    v_reused integer;
    v_step   text;
BEGIN
    PERFORM swf._require_part('replay a run', 'client');
    v_old := swf._lock_run(p_run);
    IF v_old.status NOT IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('run %s is %s: only a finished run can be replayed', p_run,
                             v_old.status);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM swf.step_states WHERE run_id = p_run AND step_name = p_from)
    THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('run %s has no step %L (steps: %s)', p_run, p_from,
                             (SELECT string_agg(step_name, ', ' ORDER BY step_index)
                                FROM swf.step_states WHERE run_id = p_run));
    END IF;
    WITH RECURSIVE downstream(step_name) AS (
        SELECT p_from
        UNION
        SELECT unnest(s.dependents) FROM swf.step_states s
          JOIN downstream d ON s.run_id = p_run AND s.step_name = d.step_name)
    SELECT array_agg(step_name) INTO v_again FROM downstream;
    INSERT INTO swf.runs (flow_id, flow_slug, input, replay_of, total_steps, remaining_steps)
    VALUES (v_old.flow_id, v_old.flow_slug,
            CASE WHEN p_new_input THEN p_input ELSE v_old.input END, p_run,
            v_old.total_steps, v_old.total_steps)
    RETURNING id INTO v_new;
    PERFORM swf._copy_steps(p_run, v_new, v_again);
    -- Completed attempts (map items too) of the reused steps, and of the map steps run again:
    -- a map step replayed keeps none of its items (its inputs may differ).
    INSERT INTO swf.step_tasks (run_id, step_name, task_index, task_id, execution, attempt,
                                status, item, output, queued_at, available_at, started_at,
                                completed_at)
    SELECT v_new, t.step_name, t.task_index, gen_random_uuid(), t.execution, t.attempt,
           'completed', t.item, t.output, t.queued_at, t.available_at, t.started_at,
           t.completed_at
      FROM swf.step_tasks t JOIN swf.step_states s
        ON s.run_id = v_new AND s.step_name = t.step_name AND s.status = 'completed'
     WHERE t.run_id = p_run AND t.status = 'completed';
    INSERT INTO swf.run_signals (run_id, name, payload, sent_at)
    SELECT v_new, name, payload, sent_at FROM swf.run_signals WHERE run_id = p_run;
    SELECT count(*) INTO v_reused FROM swf.step_states
     WHERE run_id = v_new AND status IN ('completed', 'skipped');
    UPDATE swf.runs SET remaining_steps = total_steps - v_reused WHERE id = v_new;
    PERFORM swf._notify(v_new, NULL, 'in_progress');
    FOR v_step IN SELECT step_name FROM swf.step_states
                   WHERE run_id = v_new AND status = 'created' AND remaining_deps = 0
                   ORDER BY step_index
    LOOP
        PERFORM swf._start_step(v_new, v_step);
    END LOOP;
    PERFORM swf._finish_run(v_new);
    RETURN v_new;
END $$;
REVOKE EXECUTE ON FUNCTION swf.replay_run(uuid, text, jsonb, boolean) FROM PUBLIC;
