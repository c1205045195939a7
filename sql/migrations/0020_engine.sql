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
