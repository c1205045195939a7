-- Queries of the connection layer itself.

-- name: set_application_name
SELECT set_config('application_name', %(name)s, false);
