-- 0020: the workflow engine, complete (functions: sql/functions/workflows.sql, lifecycle.sql).
--
-- - Run events are messages of the channel "workflow_events": its pgmq queue is created here
--   (or adopted, when a user channel of that name exists already), so every transition
--   stores {"run_id", "step", "status"} and NOTIFYs its id, as send_with_notify does.
-- - Local runs have a lease: the process driving their local steps renews it; a run whose
--   lease lapses with local work left fails (or is taken over: Executor.resume).
-- - Each local step records where its function lives (an import path), so any process can
--   retry or resume the run.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM swf.channels WHERE queue_name = 'swf_ch_workflow_events') THEN
        IF NOT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = 'swf_ch_workflow_events') THEN
            PERFORM pgmq.create('swf_ch_workflow_events');
        END IF;
        INSERT INTO swf.channels (channel, queue_name)
        VALUES ('workflow_events', 'swf_ch_workflow_events');
    END IF;
END $$;

-- Every role granted a part may read the events (as for any channel, swf._grant_channel).
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT role FROM swf.roles LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON pgmq.q_swf_ch_workflow_events, '
                       'pgmq.a_swf_ch_workflow_events TO %I', v_role);
    END LOOP;
END $$;

ALTER TABLE swf.runs
    ADD COLUMN lease_owner text,
    ADD COLUMN lease_until timestamptz;
CREATE INDEX runs_lease ON swf.runs (lease_until)
    WHERE status = 'in_progress' AND lease_until IS NOT NULL;

-- {"path": "module:qualname"} of a local step's function ({"path": null, "why": ...} when it
-- cannot be imported by name, e.g. a lambda), and how it is bound ("bind": "goal_task").
ALTER TABLE swf.step_states ADD COLUMN function_ref jsonb;

-- Conditional steps: a step may be skipped (its predicate said so, a dependency was skipped,
-- or it used up its attempts with on_exhausted 'skip'); its output is NULL. A step may wait
-- for a signal or a time ('waiting') before its tasks exist.
ALTER TABLE swf.step_states DROP CONSTRAINT step_states_status_check,
    ADD CONSTRAINT step_states_status_check
        CHECK (status IN ('created', 'ready', 'waiting', 'started', 'completed', 'skipped',
                          'failed', 'cancelled'));
ALTER TABLE swf.step_tasks DROP CONSTRAINT step_tasks_status_check,
    ADD CONSTRAINT step_tasks_status_check
        CHECK (status IN ('queued', 'paused', 'started', 'completed', 'skipped', 'failed',
                          'cancelled'));
ALTER TABLE swf.step_states
    -- {"run_if" | "skip_if": {"path": ...}}: the predicate, evaluated where the step runs
    ADD COLUMN condition    jsonb,
    ADD COLUMN run_on_skip  boolean NOT NULL DEFAULT false,
    ADD COLUMN on_exhausted text NOT NULL DEFAULT 'fail'
        CHECK (on_exhausted IN ('fail', 'skip')),
    -- signals and durable sleep: the signal awaited, the time to wait for (absolute, or
    -- seconds after the dependencies finished) and when the step may start
    ADD COLUMN wait_for     text,
    ADD COLUMN wait_until   timestamptz,
    ADD COLUMN wait_seconds double precision,
    ADD COLUMN due_at       timestamptz;
CREATE INDEX step_states_due ON swf.step_states (due_at) WHERE status = 'waiting';

-- Signals sent to a run, kept until a step that waits for them starts (one per name).
CREATE TABLE swf.run_signals (
    run_id   uuid NOT NULL REFERENCES swf.runs (id) ON DELETE CASCADE,
    name     text NOT NULL,
    payload  jsonb,
    sent_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, name)
);

-- Replay: a new run reusing the outputs of every step not downstream of a chosen step.
ALTER TABLE swf.runs ADD COLUMN replay_of uuid REFERENCES swf.runs (id) ON DELETE SET NULL;
CREATE INDEX runs_replay_of ON swf.runs (replay_of) WHERE replay_of IS NOT NULL;

-- Statistics read finished runs of a flow over a window.
CREATE INDEX runs_slug_finished ON swf.runs (flow_slug, finished_at)
    WHERE finished_at IS NOT NULL;
