-- Who may do what (table: sql/migrations/0014_role_parts.sql). `swf-celery grant ROLE
-- --client|--worker|--operator` records each role's part in swf.roles and gives it the
-- table privileges its reads need (swf_celery/ops/grants.sql); every state change beyond
-- those goes through a function below or elsewhere in sql/functions/ that runs as its owner
-- (SECURITY DEFINER, search_path pinned to pg_catalog, swf, pgmq, pg_temp, EXECUTE revoked
-- from PUBLIC) and checks its caller's part first:
--
--   client    publish, read its results, start and watch runs (local steps included),
--             send, listen and acknowledge messages, revoke the tasks it published;
--   worker    take and report its deliveries and the distributed steps it runs, store
--             results, expire and reap queues, sweep overdue steps; run beat and change
--             the beat schedule (sql/functions/schedules.sql);
--   operator  everything: cancel, pause, resume, retry, purge, revoke any task, delete
--             queues, requeue dead letters, clean up. The owner of schema swf (the role
--             that runs `swf-celery migrate`) and superusers are operators.
--
-- The caller is session_user: the role that logged in (inside these functions current_user
-- is their owner).

-- The part of the calling role: the one `swf-celery grant` recorded, else 'operator' for a
-- superuser or a member of the schema's owner, else NULL (none granted). Called only inside
-- the functions that run as the owner (which may read swf.roles), so it runs as its caller:
-- no privilege switch of its own on the hot path (a step's start and completion check it).
CREATE OR REPLACE FUNCTION swf._caller_part() RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_part text := (SELECT p.part FROM swf.roles p WHERE p.role = session_user);
BEGIN
    -- pg_has_role counts a superuser as a member of every role.
    IF v_part IS NULL AND pg_has_role(session_user, (SELECT n.nspowner FROM pg_namespace n
                                                      WHERE n.nspname = 'swf'), 'MEMBER') THEN
        RETURN 'operator';
    END IF;
    RETURN v_part;
END $$;
REVOKE EXECUTE ON FUNCTION swf._caller_part() FROM PUBLIC;

-- The calling role's part ('client', 'worker', 'operator'; NULL: none granted), for a process
-- that chooses what to do by it (a worker's retention bootstep cleans up only as an operator).
CREATE OR REPLACE FUNCTION swf.caller_part() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
    SELECT swf._caller_part()
$$;
REVOKE EXECUTE ON FUNCTION swf.caller_part() FROM PUBLIC;

-- Raise insufficient_privilege unless the caller plays one of p_parts; p_what says what it
-- tried. Returns the caller's part. Like swf._caller_part, called inside the owner's
-- functions only.
CREATE OR REPLACE FUNCTION swf._require_part(p_what text, VARIADIC p_parts text[] DEFAULT '{}')
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_part text := swf._caller_part();
BEGIN
    IF v_part = 'operator' OR v_part = ANY (p_parts) THEN
        RETURN v_part;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('swf: role %I (%s) may not %s: that needs %s', session_user,
                         coalesce('a ' || v_part, 'no part granted'), p_what,
                         array_to_string(p_parts || 'operator'::text, ' or ')),
        HINT = 'swf-celery grant ROLE --client|--worker|--operator gives a role its part';
END $$;
REVOKE EXECUTE ON FUNCTION swf._require_part(text, text[]) FROM PUBLIC;

-- Give p_role (granted a part) the privileges on every channel's queue tables that its part
-- needs: listening reads them, acknowledging deletes from them (swf.ensure_channel does the
-- same for a channel made later).
CREATE OR REPLACE FUNCTION swf._grant_channels(p_role name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_queue text;
BEGIN
    FOR v_queue IN SELECT queue_name FROM swf.channels LOOP
        PERFORM swf._grant_channel(v_queue, p_role);
    END LOOP;
END $$;
REVOKE EXECUTE ON FUNCTION swf._grant_channels(name) FROM PUBLIC;

-- SELECT, INSERT, UPDATE, DELETE on one channel's queue and archive tables (p_queue must be a
-- channel's: swf.channels) for p_role, or (NULL) for every role granted a part.
CREATE OR REPLACE FUNCTION swf._grant_channel(p_queue text, p_role name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, swf, pgmq, pg_temp AS $$
DECLARE
    v_role name;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM swf.channels WHERE queue_name = p_queue) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('swf: %L is not the queue of a channel', p_queue);
    END IF;
    FOR v_role IN SELECT role FROM swf.roles WHERE p_role IS NULL OR role = p_role LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON pgmq.%I, pgmq.%I TO %I',
                       'q_' || p_queue, 'a_' || p_queue, v_role);
    END LOOP;
END $$;
REVOKE EXECUTE ON FUNCTION swf._grant_channel(text, name) FROM PUBLIC;
