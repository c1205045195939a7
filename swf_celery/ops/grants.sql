-- What each part of a deployment may do, for `swf-celery grant ROLE --worker|--client|
-- --operator` (swf_celery/ops/grants.py). {role} and {owner} are replaced by quoted
-- identifiers (psycopg.sql.Identifier): the role being granted, and the owner of the
-- schema's functions (the role that ran `swf-celery migrate`), whose future pgmq queue
-- tables the role gets through default privileges.
--
-- The rule for new tables: a migration that adds a table to the swf schema adds it to the
-- blocks below that need it (tests/security/test_grants.py fails on a table no block
-- names); the operator also gets new swf tables through default privileges. Roles granted
-- before such a migration get the table by running `swf-celery grant` again.

-- name: owner
SELECT pg_get_userbyid(proowner) FROM pg_proc
 WHERE oid = 'swf.queue_ensure(text, bigint)'::regprocedure;

-- name: role_exists
SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(role)s);

-- name: reset
-- Start from nothing, so a grant is exact (an operator made a worker loses the rest).
REVOKE ALL ON ALL TABLES IN SCHEMA swf, pgmq FROM {role};
REVOKE EXECUTE ON FUNCTION swf.queue_ensure(text, bigint), swf.queue_drop(text),
    swf.queue_reap(), swf.task_revoke(text[]) FROM {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA pgmq REVOKE ALL ON TABLES FROM {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA swf REVOKE ALL ON TABLES FROM {role};
GRANT USAGE ON SCHEMA swf, pgmq TO {role};
GRANT SELECT ON swf.schema_migrations, swf.schema_functions TO {role};  -- the schema check

-- name: worker
-- Consume and publish (broker), report steps, store results, send events, revoke.
GRANT EXECUTE ON FUNCTION swf.queue_ensure(text, bigint), swf.queue_drop(text),
    swf.queue_reap(), swf.task_revoke(text[]) TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON swf.revoked_tasks TO {role};
GRANT SELECT, UPDATE ON swf.queues TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON swf.queue_waiters, swf.queue_bindings TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgmq TO {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA pgmq
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON swf.task_results, swf.group_results, swf.chords,
    swf.chord_parts TO {role};
GRANT SELECT, INSERT ON swf.chord_additions TO {role};  -- Task.add_to_chord, once per id
GRANT SELECT ON swf.flows, swf.flow_steps, swf.channels TO {role};
GRANT SELECT, UPDATE ON swf.runs, swf.step_states TO {role};
GRANT SELECT, INSERT, UPDATE ON swf.step_tasks TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON swf.transient_messages TO {role};
GRANT SELECT, INSERT ON swf.transient_archive TO {role};
GRANT SELECT, INSERT ON swf.dead_letters TO {role};  -- rejects, too many deliveries, malformed

-- name: client
-- Publish tasks, read results, start and watch runs (local steps included), goals and
-- messages, revoke tasks. No reading or deleting of queued messages: that is a worker's
-- (a revoke deletes the revoked task's messages through swf.task_revoke, as its owner).
GRANT EXECUTE ON FUNCTION swf.queue_ensure(text, bigint), swf.task_revoke(text[]) TO {role};
GRANT SELECT ON swf.queues TO {role};
GRANT SELECT, INSERT ON swf.queue_bindings TO {role};  -- kombu declares what it publishes to
GRANT SELECT, UPDATE ON swf.queue_waiters TO {role};
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA pgmq TO {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA pgmq GRANT SELECT, INSERT ON TABLES TO {role};
GRANT SELECT, INSERT ON swf.transient_messages TO {role};
GRANT SELECT, DELETE ON swf.task_results TO {role};
GRANT SELECT, INSERT, DELETE ON swf.group_results TO {role};
GRANT SELECT, INSERT, UPDATE ON swf.chords TO {role};
GRANT SELECT, INSERT, DELETE ON swf.chord_parts TO {role};  -- applying a chord resets it
GRANT SELECT, INSERT, UPDATE ON swf.flows, swf.runs, swf.step_states, swf.step_tasks,
    swf.task_graphs TO {role};
GRANT SELECT, INSERT, DELETE ON swf.flow_steps TO {role};  -- a run registers its definition
GRANT SELECT, INSERT ON swf.channels TO {role};

-- name: operator
-- Lifecycle (pause, resume, cancel, retry, revoke, purge) and cleanup: every row of the
-- schema, no DDL (queues are created and dropped through the functions above).
GRANT EXECUTE ON FUNCTION swf.queue_ensure(text, bigint), swf.queue_drop(text),
    swf.queue_reap(), swf.task_revoke(text[]) TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA swf, pgmq TO {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA swf, pgmq
    GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO {role};
