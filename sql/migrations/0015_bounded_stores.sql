-- 0015: every store bounded. The retention functions (sql/functions/retention.sql) also clean
-- up task graphs, dynamic flows nothing refers to, unacknowledged channel messages and durable
-- queues nobody uses; a chord that expires with its header pending leaves a marker so that a
-- late header part fails the chord instead of waiting forever (sql/functions/results.sql).
--
-- * swf.flows.last_used_at: when a dynamic flow was created or last ran (retention moves it
--   to the start of the newest run it deletes); its steps' own created_at count as use too.
-- * swf.chords.expired_at: the chord expired with its header incomplete; its parts are gone
--   and the row stays as a marker until its new expiry.
-- * swf.queues.last_active: for durable queues too, the last declaration or consumer activity
--   (consumers mark the queues they consume every minute). Durable queues never had it kept
--   up to date: it starts now, so every durable queue gets a full retention period.

ALTER TABLE swf.flows ADD COLUMN last_used_at timestamptz NOT NULL DEFAULT now();
UPDATE swf.flows f
   SET last_used_at = greatest(f.created_at,
                               (SELECT max(s.created_at) FROM swf.flow_steps s
                                 WHERE s.flow_id = f.id),
                               (SELECT max(r.inserted_at) FROM swf.runs r
                                 WHERE r.flow_id = f.id));
COMMENT ON COLUMN swf.flows.last_used_at IS
    'created, or the start of its newest run that retention deleted (dynamic flows'' retention)';

ALTER TABLE swf.chords ADD COLUMN expired_at timestamptz;
COMMENT ON COLUMN swf.chords.expired_at IS
    'expired with its header incomplete: a late header part fails the chord (done: reported)';

UPDATE swf.queues SET last_active = now() WHERE expires_ms IS NULL;
COMMENT ON COLUMN swf.queues.last_active IS
    'last declaration or consumer activity (retention of unused queues)';

CREATE INDEX task_graphs_updated_at ON swf.task_graphs (updated_at);
CREATE INDEX task_graphs_workflow_id ON swf.task_graphs (workflow_id)
    WHERE workflow_id IS NOT NULL;
