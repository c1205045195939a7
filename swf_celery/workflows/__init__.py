"""Workflows: DAGs of Celery tasks whose state lives in PostgreSQL.

Pure graph rules in :mod:`~swf_celery.workflows.dag`; step options and ``@step`` in
:mod:`~swf_celery.workflows.steps`; loading definitions in
:mod:`~swf_celery.workflows.definition`; stored (dynamic) flows in
:mod:`~swf_celery.workflows.flows`; the SQL state machine's Python side in
:mod:`~swf_celery.workflows.coordinator`; the step runner's task name in
:mod:`~swf_celery.workflows.names`; what ``import swf_celery`` adds to every Celery app
(the step runner, the timeout sweeper) in :mod:`~swf_celery.workflows.registration`; the
step runner on workers in :mod:`~swf_celery.workflows.worker_task`; the clock-driven sweep
of timed-out attempts in :mod:`~swf_celery.workflows.sweeper`; local steps and waiting in
:mod:`~swf_celery.workflows.local_runner`; starting runs in
:mod:`~swf_celery.workflows.executor`; pause/resume/cancel/retry in
:mod:`~swf_celery.workflows.lifecycle`.
"""
