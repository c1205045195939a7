"""The result backend's chord and exception edges: add_to_chord counted once per added
task (a retried call after a lost reply), and only ``Exception`` subclasses rebuilt."""

from __future__ import annotations

import uuid

import pytest
from celery import Celery
from celery.result import AsyncResult

from tests.helpers import sql_value


def test_add_to_chord_counts_each_added_task_once(celery_app: Celery, backend_db: str) -> None:
    backend = celery_app.backend
    group_id = str(uuid.uuid4())
    backend.set_chord_size(group_id, 2)
    added = AsyncResult(str(uuid.uuid4()), app=celery_app)
    backend.add_to_chord(group_id, added)
    backend.add_to_chord(group_id, added)  # the same call again: its reply was lost
    assert sql_value(backend_db, "SELECT extra FROM swf.chords WHERE group_id = %s",
                     (group_id,)) == 1
    backend.add_to_chord(group_id, AsyncResult(str(uuid.uuid4()), app=celery_app))
    assert sql_value(backend_db, "SELECT extra FROM swf.chords WHERE group_id = %s",
                     (group_id,)) == 2


@pytest.mark.parametrize("name", ["SystemExit", "KeyboardInterrupt", "GeneratorExit",
                                  "BaseException"])
def test_a_stored_base_exception_loads_as_a_plain_exception(celery_app: Celery,
                                                            name: str) -> None:
    exc = celery_app.backend.exception_to_python(
        {"exc_module": "builtins", "exc_type": name, "exc_message": ["stop"]})
    assert isinstance(exc, Exception)
    assert type(exc).__name__ == name and type(exc).__module__ == "celery.exceptions"
