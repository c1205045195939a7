-- 0017: revokes by stamped header that hold. Celery keeps the stamps a
-- `revoke_by_stamped_headers` broadcast names in each worker's memory only, so a task sent
-- right after the revoke, and any task a restarted worker takes, runs anyway. The broker
-- records every such broadcast here (sql/functions/revokes.sql); workers apply the recorded
-- revokes they have not seen when they start consuming and before they hand over a stamped
-- message (transport/revokes.py). Read and written only through those functions.

CREATE TABLE IF NOT EXISTS swf.revoked_stamps (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    headers    jsonb NOT NULL CHECK (jsonb_typeof(headers) = 'object'),
    revoked_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS revoked_stamps_revoked_at ON swf.revoked_stamps (revoked_at);
COMMENT ON TABLE swf.revoked_stamps IS
    'revoke_by_stamped_headers broadcasts: stamp name -> revoked values, as Celery''s '
    'worker_state.revoked_stamps takes them';
