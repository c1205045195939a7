-- 0010: every outcome of a workflow step reaches the coordinator (the functions are in
-- sql/functions/workflows.sql and lifecycle.sql). Its one table: add_to_chord counts each
-- added task once, so a retried call (its reply lost) counts nothing twice.
CREATE TABLE swf.chord_additions (
    group_id text NOT NULL REFERENCES swf.chords (group_id) ON DELETE CASCADE,
    task_id  text NOT NULL,
    PRIMARY KEY (group_id, task_id)
);
