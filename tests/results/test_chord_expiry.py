"""A chord whose header is still pending at its expiry fails clearly when a part returns late.

Retention (an operator's ``swf-celery cleanup``) and the backend's own ``celery.backend_cleanup``
turn such a chord into a marker; the first late header part fails the callback with a
ChordError naming the chord and the cause, once, and never re-creates a sizeless row.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import chord, states
from celery.app.task import Context
from celery.exceptions import ChordError

from swf_celery.ops.retention import cleanup
from tests.helpers import sql, sql_value, wait_until


def _chord_row(url: str, group_id: str) -> tuple[Any, ...] | None:
    rows = sql(url, "SELECT size, ready, done, expired_at IS NOT NULL, "
                    "(SELECT count(*) FROM swf.chord_parts p WHERE p.group_id = c.group_id) "
                    "FROM swf.chords c WHERE group_id = %s", (group_id,))
    return rows[0] if rows else None


def _expire(url: str, group_id: str) -> None:
    """The chord's expiry (result_chord_expires) passes with no part returning."""
    sql(url, "UPDATE swf.chords SET expires_at = now() - interval '1 second' "
             "WHERE group_id = %s", (group_id,))


def test_a_late_header_part_fails_a_chord_that_expired_pending(
        celery_app: Any, worker: Any, backend_db: str, tmp_path: Path) -> None:
    t = celery_app.tasks
    gate = tmp_path / "late part may run"
    body = t["t.tsum"].s().on_error(t["t.record_error"].s(directory=str(tmp_path)))
    result = chord([t["t.add"].s(1, 1), t["t.wait_for_file"].s(str(gate), 5)], body)()
    group_id = result.parent.id
    wait_until(lambda: (_chord_row(backend_db, group_id) or (0, 0))[1] == 1,
               what="the first header part")
    _expire(backend_db, group_id)

    report = cleanup(backend_db)  # what an operator's scheduled `swf-celery cleanup` runs

    assert report.deleted["results"] == 1
    # A marker: the size and count stay, the part and the header are gone.
    assert _chord_row(backend_db, group_id) == (2, 1, False, True, 0)
    gate.touch()  # the second header part returns, too late

    with pytest.raises(ChordError) as failure:
        result.get(timeout=30, propagate=True)
    message = str(failure.value)
    assert group_id in message and "expired before its header completed" in message
    assert "1 part(s) had returned" in message and "returned too late" in message
    assert celery_app.AsyncResult(result.id).state == states.FAILURE
    wait_until(lambda: (tmp_path / result.id).exists() and (tmp_path / result.id).read_text(),
               what="the callback's errback")
    assert (tmp_path / result.id).read_text().startswith("ChordError: Chord")
    # Reported once: the marker is done, no part and no second row was created.
    assert _chord_row(backend_db, group_id) == (2, 1, True, True, 0)
    assert sql_value(backend_db, "SELECT count(*) FROM swf.chords WHERE group_id = %s",
                     (group_id,)) == 1


def _part(group_id: str, task_id: str, index: int, body: Any) -> Context:
    return Context(id=task_id, group=group_id, group_index=index, chord=dict(body))


def test_backend_cleanup_keeps_a_marker_and_a_second_late_part_changes_nothing(
        celery_app: Any, worker: Any, backend_db: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    backend = celery_app.backend
    group_id = str(uuid.uuid4())
    body = celery_app.tasks["t.echo"].s().on_error(
        celery_app.tasks["t.record_error"].s(directory=str(tmp_path)))
    body.freeze()
    backend.apply_chord((group_id, []), body)
    backend.set_chord_size(group_id, 3)
    backend.on_chord_part_return(_part(group_id, "a", 0, body), states.SUCCESS, "A")
    _expire(backend_db, group_id)

    backend.cleanup()  # celery.backend_cleanup, as a worker's role runs it

    assert _chord_row(backend_db, group_id) == (3, 1, False, True, 0)
    backend.on_chord_part_return(_part(group_id, "b", 1, body), states.SUCCESS, "B")
    with pytest.raises(ChordError, match="expired before its header completed"):
        celery_app.AsyncResult(body.id).get(timeout=30)
    wait_until(lambda: (tmp_path / body.id).exists(), what="the callback's errback")
    (tmp_path / body.id).unlink()
    # A third part: already reported, nothing happens (no second errback, no new state).
    backend.on_chord_part_return(_part(group_id, "c", 2, body), states.SUCCESS, "C")
    assert _chord_row(backend_db, group_id) == (3, 1, True, True, 0)

    # The marker itself expires and goes; a part after that finds no chord and leaves none.
    _expire(backend_db, group_id)
    backend.cleanup()
    assert _chord_row(backend_db, group_id) is None
    with caplog.at_level(logging.WARNING):
        backend.on_chord_part_return(_part(group_id, "d", 3, body), states.SUCCESS, "D")
    assert _chord_row(backend_db, group_id) is None
    assert any(group_id in r.getMessage() and "ignored" in r.getMessage()
               for r in caplog.records)
    assert not (tmp_path / body.id).exists()


def test_a_chord_that_completes_is_not_touched_by_expiry_of_others(
        celery_app: Any, worker: Any, backend_db: str) -> None:
    t = celery_app.tasks
    result = chord([t["t.add"].s(i, i) for i in range(3)], t["t.tsum"].s())()
    assert result.get(timeout=30) == 6
    group_id = result.parent.id
    # Its done marker expires and goes (nothing is reported for a chord that fired).
    _expire(backend_db, group_id)
    cleanup(backend_db)
    assert _chord_row(backend_db, group_id) is None
    assert celery_app.AsyncResult(result.id).get(timeout=5) == 6
