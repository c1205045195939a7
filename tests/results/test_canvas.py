"""Canvas on the swf result backend with a real in-process worker.

Chords complete through the Postgres counter: no ``celery.chord_unlock`` task is ever
sent, which each chord test checks on the worker's task statistics.
"""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from celery import chain, chord, group, states
from celery.exceptions import ChordError
from celery.signals import before_task_publish

from tests.helpers import wait_until


@pytest.fixture
def t(celery_app):
    return celery_app.tasks


@pytest.fixture(autouse=True)
def no_chord_unlock(celery_app, worker):
    yield
    from celery.worker import state

    assert "celery.chord_unlock" not in state.total_count


def test_chain(t, worker):
    result = chain(t["t.add"].s(1, 2), t["t.add"].s(3), t["t.add"].s(4))()
    assert result.get(timeout=30) == 10
    assert result.parent.get(timeout=30) == 6


def test_group_join_and_join_native(t, worker):
    result = group(t["t.add"].s(i, i) for i in range(20))()
    assert result.join_native(timeout=30) == [2 * i for i in range(20)]
    assert result.join(timeout=30) == [2 * i for i in range(20)]
    assert result.get(timeout=30) == [2 * i for i in range(20)]


def test_chord(t, worker, backend_db):
    result = chord([t["t.add"].s(i, i) for i in range(10)], t["t.tsum"].s())()
    assert result.get(timeout=30) == 90
    # The chord's state is cleaned up: parts gone, a done marker left.
    with psycopg.connect(backend_db) as conn:
        row = conn.execute("SELECT done, ready, size FROM swf.chords WHERE group_id = %s",
                           (result.parent.id,)).fetchone()
        parts = conn.execute("SELECT count(*) FROM swf.chord_parts WHERE group_id = %s",
                             (result.parent.id,)).fetchone()[0]
    assert row == (True, 10, 10)
    assert parts == 0


def test_chord_results_keep_header_order(t, worker):
    result = chord([t["t.echo"].s(i) for i in range(15)], t["t.echo"].s())()
    assert result.get(timeout=30) == list(range(15))


def test_chord_of_chords(t, worker):
    inner = [chord([t["t.add"].s(i, j) for j in range(3)], t["t.tsum"].s()) for i in range(3)]
    result = chord(inner, t["t.tsum"].s())()
    # inner sums: 3i + 3 for i in 0..2 -> 3, 6, 9
    assert result.get(timeout=30) == 18


def test_chain_in_chord(t, worker):
    header = [chain(t["t.add"].s(i, 1), t["t.add"].s(10)) for i in range(4)]
    result = chord(header, t["t.tsum"].s())()
    assert result.get(timeout=30) == sum(i + 11 for i in range(4))


def test_chord_in_chain(t, worker):
    workflow = chain(
        t["t.add"].s(1, 1),
        chord([t["t.add"].s(i) for i in range(3)], t["t.tsum"].s()),
        t["t.add"].s(100),
    )
    # 2 -> [2, 3, 4] -> 9 -> 109
    assert workflow().get(timeout=30) == 109


def test_duplicate_of_a_chains_first_task_keeps_the_chord_header_id(celery_app, t, worker,
                                                                    tmp_path):
    """Celery's ``test_chord_header_id_duplicated_on_rabbitmq_msg_duplication``: a copy of a
    chain's first task, published from ``before_task_publish`` with the handler's keyword
    arguments (its ``signal`` among them) as RabbitMQ would deliver a duplicate, runs the
    chord after it in the same header group as the original."""
    out = tmp_path / "groups.log"
    first = t["t.echo"].s(42)
    first_id = first.freeze().id
    workflow = chain(first, chord([t["t.record_group"].s(str(out)), t["t.echo"].s()],
                                  t["t.echo"].s()))

    def duplicate(sender=None, body=None, exchange=None, routing_key=None, headers=None,
                  properties=None, declare=None, retry_policy=None, **kwargs):
        if headers.get("id") != first_id:
            return
        with celery_app.producer_pool.acquire(block=True) as producer:
            producer.publish(body, exchange=exchange, routing_key=routing_key, retry=None,
                             retry_policy=retry_policy, serializer="json", delivery_mode=None,
                             headers=headers, **kwargs)

    before_task_publish.connect(duplicate, weak=False)
    try:
        assert workflow().get(timeout=30) == [42, 42]
    finally:
        before_task_publish.disconnect(duplicate)
    wait_until(lambda: out.exists() and len(out.read_text().split()) == 2,
               what="both copies of the chord header task")
    first_group, second_group = out.read_text().split()
    assert first_group == second_group != "None"


def test_group_in_chord_header(t, worker):
    # A group inside a header is unrolled into it (as on Celery's Redis backend).
    header = [group(t["t.add"].s(i, i) for i in range(3)), t["t.add"].s(5, 5)]
    result = chord(header, t["t.echo"].s())()
    assert sorted(result.get(timeout=30)) == [0, 2, 4, 10]


def test_add_to_chord(t, worker):
    result = chord([t["t.grow_chord"].s(1), t["t.echo"].s(2)], t["t.tsum"].s())()
    assert result.get(timeout=30) == 1 + 2 + 100


def test_chord_with_empty_header(t, worker):
    assert chord([], t["t.echo"].s())().get(timeout=30) == []


def test_link_error_old_and_new_style(t, worker, tmp_path):
    old = t["t.fail"].apply_async(("a",), link_error=t["t.record_failure"].s(str(tmp_path)))
    new = t["t.fail"].apply_async(
        ("b",), link_error=t["t.record_error"].s(directory=str(tmp_path)))
    for result in (old, new):
        with pytest.raises(ValueError):
            result.get(timeout=30)
    wait_until(lambda: (tmp_path / old.id).exists(), what="old-style errback")
    # The errback creates the file, then writes it: wait for the content.
    wait_until(lambda: (tmp_path / new.id).exists() and (tmp_path / new.id).read_text(),
               what="new-style errback")
    assert (tmp_path / new.id).read_text() == "ValueError: b"


def test_chain_failure_propagates(t, worker):
    result = chain(t["t.add"].s(1, 1), t["t.fail"].si("mid"), t["t.add"].s(1))()
    with pytest.raises(ValueError, match="mid"):
        result.get(timeout=30)


def test_chord_error_reaches_errback(t, worker, tmp_path):
    body = t["t.tsum"].s().on_error(t["t.record_error"].s(directory=str(tmp_path)))
    result = chord([t["t.add"].s(1, 1), t["t.fail"].s("header boom")], body)()
    with pytest.raises(ValueError, match="header boom"):
        result.get(timeout=30)  # follows parents: the header's own error comes first
    with pytest.raises(ChordError, match="header boom"):
        result.get(timeout=30, follow_parents=False)
    wait_until(lambda: (tmp_path / result.id).exists(), what="chord errback")
    text = (tmp_path / result.id).read_text()
    assert text.startswith("ChordError") and "header boom" in text


def test_chord_callback_failure(t, worker):
    result = chord([t["t.add"].s(1, 1)], t["t.fail"].s())()
    with pytest.raises(ValueError):
        result.get(timeout=30)


def _part(group_id, task_id, index, body):
    from celery.app.task import Context

    return Context(id=task_id, group=group_id, group_index=index, chord=dict(body))


def test_header_part_counts_once_and_late_copies_are_ignored(celery_app, worker, backend_db):
    backend = celery_app.backend
    group_id = str(uuid.uuid4())
    body = celery_app.tasks["t.echo"].s()
    body.freeze()
    backend.apply_chord((group_id, []), body)
    backend.set_chord_size(group_id, 2)
    backend.on_chord_part_return(_part(group_id, "a", 0, body), states.SUCCESS, "A")
    # A redelivered copy of the same header task (acks_late, lost worker) counts once.
    backend.on_chord_part_return(_part(group_id, "a", 0, body), states.SUCCESS, "A again")
    backend.on_chord_part_return(_part(group_id, "b", 1, body), states.SUCCESS, "B")
    assert celery_app.AsyncResult(body.id).get(timeout=30) == ["A", "B"]
    # A copy arriving after the callback fired changes nothing.
    backend.on_chord_part_return(_part(group_id, "b", 1, body), states.SUCCESS, "B late")
    with psycopg.connect(backend_db) as conn:
        assert conn.execute("SELECT done, ready FROM swf.chords WHERE group_id = %s",
                            (group_id,)).fetchone() == (True, 2)


def test_concurrent_parts_fire_the_callback_once(celery_app, worker, tmp_path):
    backend = celery_app.backend
    group_id = str(uuid.uuid4())
    out = tmp_path / "callback.log"
    body = celery_app.tasks["t.append_line"].s(str(out))
    body.freeze()
    parts = 200
    backend.apply_chord((group_id, []), body)
    backend.set_chord_size(group_id, parts)

    def report(indexes):
        for i in indexes:
            backend.on_chord_part_return(_part(group_id, f"t{i}", i, body), states.SUCCESS, i)

    threads = [threading.Thread(target=report, args=(range(k, parts, 8),)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert celery_app.AsyncResult(body.id).get(timeout=30) == list(range(parts))
    wait_until(out.exists, what="callback output")
    assert out.read_text().count("\n") == 1
