"""The Celery result backend in PostgreSQL (``result_backend = "swf://…"``).

:mod:`~swf_celery.results.backend` stores and reads results and counts chords,
:mod:`~swf_celery.results.consumer` wakes waiting ``.get()`` calls on NOTIFY, and
:mod:`~swf_celery.results.exceptions` rebuilds stored exceptions without importing anything.
"""
