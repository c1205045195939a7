"""Names the workflow layer shares with Celery, in a module that imports nothing.

The step runner's task name is needed by :mod:`.registration` (imported by ``import
swf_celery``, so it must stay cheap) and by :mod:`.definition`; defined here, neither has
to import the coordinator (or the other) for it.
"""

#: The Celery task that runs distributed steps on workers (:mod:`.worker_task`). The
#: coordinator's step messages (``swf._step_message`` in SQL) name it; ``import swf_celery``
#: registers it with every Celery app (:mod:`.registration`).
STEP_TASK_NAME = "swf_celery.step"
