-- 0014: the part each role plays, checked by the functions that change state on its behalf
-- (sql/functions/privileges.sql), and who created each queue.
--
-- * swf.roles: written by `swf-celery grant ROLE --client|--worker|--operator`. Roles granted
--   by an earlier release get the part their privileges show (an operator may delete runs, a
--   worker may store results, a client may start runs); `swf-celery grant` again makes their
--   privileges this release's.
-- * swf.queues.declared_by: 'client' for a queue a client created (publishing to it, or
--   declaring it): a worker's declaration takes such a queue over (sql/functions/queues.sql).

CREATE TABLE swf.roles (
    role       name PRIMARY KEY,
    part       text NOT NULL CHECK (part IN ('client', 'worker', 'operator')),
    granted_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE swf.roles IS 'the part (client, worker, operator) each role was granted';

ALTER TABLE swf.queues ADD COLUMN declared_by text CHECK (declared_by IN ('client'));

INSERT INTO swf.roles (role, part)
SELECT r.rolname,
       CASE WHEN has_table_privilege(r.oid, 'swf.runs', 'DELETE') THEN 'operator'
            WHEN has_table_privilege(r.oid, 'swf.task_results', 'INSERT') THEN 'worker'
            ELSE 'client' END
  FROM pg_roles r
 WHERE NOT r.rolsuper
   AND r.rolname NOT LIKE 'pg\_%'
   AND r.oid <> (SELECT nspowner FROM pg_namespace WHERE nspname = 'swf')
   AND has_table_privilege(r.oid, 'swf.runs', 'SELECT');
