-- 0007: goal-driven task graphs. A decomposer's answer is kept as given (hierarchical)
-- and flattened (the leaves that run), so a graph can be previewed, approved, listed and
-- executed again without asking the decomposer twice.
CREATE TABLE swf.task_graphs (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    goal          text NOT NULL,
    tasks         jsonb NOT NULL,          -- as the decomposer returned them (validated)
    flat_tasks    jsonb NOT NULL,          -- leaves with qualified ids and expanded deps
    status        text NOT NULL DEFAULT 'decomposed'
                  CHECK (status IN ('decomposed', 'approved', 'running', 'completed', 'failed')),
    workflow_id   text,                    -- the dynamic flow built from it
    last_run_id   uuid,
    decomposed_at timestamptz NOT NULL DEFAULT now(),
    approved_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX task_graphs_decomposed_at ON swf.task_graphs (decomposed_at DESC);
