"""Goal-driven workflows: a decomposer (rules or an LLM) turns a goal into a task graph,
validated, persisted and run as a dynamic flow (:mod:`~swf_celery.goals.orchestrator`,
:mod:`~swf_celery.goals.decomposers`)."""
