-- What each part of a deployment may do, for `swf-celery grant ROLE --worker|--client|
-- --operator` (swf_celery/ops/grants.py). {role} and {owner} are replaced by quoted
-- identifiers (psycopg.sql.Identifier): the role being granted, and the owner of the
-- schema's functions (the role that ran `swf-celery migrate`), whose future pgmq queue
-- tables and functions the role gets through default privileges.
--
-- Table privileges are what reads and the broker's hot path need; every other state change
-- goes through a function that runs as its owner and checks the caller's part, recorded in
-- swf.roles (sql/functions/privileges.sql). Each role may EXECUTE every function of the
-- schema: the functions decide.
--
-- The rule for new tables: a migration that adds a table to the swf schema adds it to the
-- blocks below that need it (tests/security/test_grants.py fails on a table no block
-- names, and checks every role's direct SELECT/INSERT/UPDATE/DELETE on every table); the
-- operator also gets new swf tables through default privileges. Roles granted before such
-- a migration get the table by running `swf-celery grant` again.

-- name: owner
SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'swf';

-- name: role_exists
SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(role)s);

-- name: reset
-- Start from nothing, so a grant is exact (an operator made a worker loses the rest).
REVOKE ALL ON ALL TABLES IN SCHEMA swf, pgmq FROM {role};
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA swf FROM {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA pgmq REVOKE ALL ON TABLES FROM {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA swf REVOKE ALL ON TABLES FROM {role};
GRANT USAGE ON SCHEMA swf, pgmq TO {role};
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA swf TO {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA swf GRANT EXECUTE ON FUNCTIONS TO {role};
GRANT SELECT ON swf.schema_migrations, swf.schema_functions TO {role};  -- the schema check
GRANT SELECT ON swf.queues, swf.queue_bindings, swf.channels TO {role};  -- routing, lookups
GRANT SELECT ON swf.flows, swf.flow_steps, swf.runs, swf.step_states, swf.step_tasks
    TO {role};  -- watching runs
GRANT USAGE, SELECT ON SEQUENCE swf.notify_skips TO {role};  -- NOTIFYs skipped, and reading that
GRANT SELECT ON swf.flow_keys TO {role};  -- flow keys and their holds (the console, the CLI)
GRANT SELECT ON swf.schedules, swf.schedule_ticks TO {role};  -- the beat schedule, its ticks

-- swf.queue_waiters, swf.queue_sleepers, swf.roles, swf.flow_turns, swf.idempotency_keys, swf.run_signals and
-- swf.revoked_stamps are written and read only by the functions (wake-ups, grants, the
-- limited read, idempotent publish, signals, revokes by stamped header); the operator reads
-- them with every other table.

-- name: worker
-- Consume and publish (the broker's tables: read, hide, delete, dead-letter), store results
-- and chord state; steps, queues and revokes change through the functions.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgmq TO {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA pgmq
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role};
REVOKE INSERT, UPDATE, DELETE ON pgmq.meta FROM {role};  -- queues are made by the functions
GRANT SELECT, INSERT, UPDATE, DELETE ON swf.transient_messages TO {role};
GRANT SELECT, INSERT ON swf.transient_archive TO {role};
GRANT SELECT, INSERT ON swf.dead_letters TO {role};  -- rejects, too many deliveries, malformed
GRANT SELECT ON swf.revoked_tasks TO {role};  -- checking redelivered messages
GRANT SELECT, INSERT, UPDATE, DELETE ON swf.task_results, swf.group_results, swf.chords,
    swf.chord_parts TO {role};
GRANT SELECT, INSERT ON swf.chord_additions TO {role};  -- Task.add_to_chord, once per id

-- name: client
-- Publish tasks (INSERT only: no reading or deleting of queued messages), read and forget
-- results, apply chords, start and watch runs, goals and messages (channel tables are
-- granted by swf.ensure_channel).
GRANT INSERT ON ALL TABLES IN SCHEMA pgmq TO {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA pgmq GRANT INSERT ON TABLES TO {role};
REVOKE INSERT ON pgmq.meta FROM {role};  -- queues are made by the functions
GRANT SELECT ON pgmq.meta TO {role};  -- pgmq's functions look queues up there
GRANT INSERT ON swf.transient_messages TO {role};
GRANT SELECT, DELETE ON swf.task_results TO {role};
GRANT SELECT, INSERT, DELETE ON swf.group_results TO {role};
GRANT SELECT, INSERT, UPDATE ON swf.chords TO {role};
GRANT SELECT, INSERT, DELETE ON swf.chord_parts TO {role};  -- applying a chord resets it
GRANT INSERT, UPDATE ON swf.flows TO {role};  -- FlowBuilder: a stored flow and its steps
GRANT INSERT, DELETE ON swf.flow_steps TO {role};
GRANT SELECT, INSERT, UPDATE ON swf.task_graphs TO {role};

-- name: operator
-- Lifecycle (pause, resume, cancel, retry, revoke, purge) and cleanup: every row of the
-- schema, no DDL (queues are created and dropped through the functions).
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA swf, pgmq TO {role};
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA swf, pgmq
    GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO {role};

-- name: record_part
-- The part the functions check.
INSERT INTO swf.roles (role, part) VALUES (%(role)s, %(part)s)
ON CONFLICT (role) DO UPDATE SET part = excluded.part, granted_at = now();

-- name: grant_channels
-- The tables of the channels that exist (a channel made later is granted when it is made).
SELECT swf._grant_channels(%(role)s);
