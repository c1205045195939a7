-- Queries of the beat schedule (functions: sql/functions/schedules.sql).

-- name: put
SELECT * FROM swf.schedule_put(%(name)s, %(entry)s::jsonb, %(source)s, %(next_run_at)s,
                               %(reset)s);

-- name: pause
SELECT swf.schedule_pause(%(name)s, %(paused)s, %(next_run_at)s);

-- name: delete
SELECT swf.schedule_delete(%(name)s);

-- name: prune
SELECT swf.schedule_prune(%(keep)s);

-- name: due
-- The due entries this beat now holds, and the database's clock (every beat's one clock).
SELECT d.*, clock_timestamp() AS now FROM swf.schedule_due(%(limit)s) d;

-- name: fired
SELECT swf.schedule_fired(%(id)s, %(ticks)s::jsonb, %(beat)s, %(next_run_at)s);

-- name: next_due
-- Seconds to the earliest next run (negative: an entry another beat holds right now).
SELECT extract(epoch FROM min(next_run_at) - clock_timestamp())::float8
  FROM swf.schedules WHERE NOT paused;

-- name: run_active
SELECT EXISTS (SELECT 1 FROM swf.schedule_ticks t JOIN swf.runs r ON r.id = t.run_id
                WHERE t.schedule_id = %(id)s AND r.status IN ('in_progress', 'paused'));

-- name: entries
-- Every entry (or the one named), with its last tick and that tick's state: the task's
-- result state, or the run's status.
SELECT s.*, t.tick_at AS last_tick_at, t.outcome AS last_outcome, t.task_id AS last_task_id,
       t.run_id::text AS last_run_id, t.beat AS last_beat,
       coalesce(r.status, run.status, CASE WHEN t.outcome = 'sent' THEN 'PENDING' END)
           AS last_state
  FROM swf.schedules s
  LEFT JOIN LATERAL (SELECT * FROM swf.schedule_ticks t WHERE t.schedule_id = s.id
                      ORDER BY t.tick_at DESC LIMIT 1) t ON true
  LEFT JOIN swf.task_results r ON r.task_id = t.task_id
  LEFT JOIN swf.runs run ON run.id = t.run_id
 WHERE %(name)s::text IS NULL OR s.name = %(name)s
 ORDER BY s.name;

-- name: ticks
SELECT t.tick_at, t.outcome, t.task_id, t.run_id::text, t.missed, t.beat, t.fired_at
  FROM swf.schedule_ticks t JOIN swf.schedules s ON s.id = t.schedule_id
 WHERE s.name = %(name)s
 ORDER BY t.tick_at DESC LIMIT %(limit)s;

-- name: django_tasks
-- django-celery-beat's periodic tasks with their schedules (its tables, in the database the
-- Django project uses); what a clocked (one-off) entry needs is not imported.
SELECT t.name, t.task, t.args, t.kwargs, t.queue, t.exchange, t.routing_key, t.priority,
       t.headers, t.enabled, t.last_run_at, t.total_run_count, t.one_off,
       i.every AS interval_every, i.period AS interval_period,
       c.minute, c.hour, c.day_of_week, c.day_of_month, c.month_of_year,
       s.event AS solar_event, s.latitude, s.longitude, t.clocked_id
  FROM django_celery_beat_periodictask t
  LEFT JOIN django_celery_beat_intervalschedule i ON i.id = t.interval_id
  LEFT JOIN django_celery_beat_crontabschedule c ON c.id = t.crontab_id
  LEFT JOIN django_celery_beat_solarschedule s ON s.id = t.solar_id
 ORDER BY t.name;
