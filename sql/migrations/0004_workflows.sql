-- 0004: the workflow coordinator's tables: flows and their steps, runs, step states and step
-- tasks. The state machine that moves them is sql/functions/workflows.sql.

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
