"""The swf result backend with a real in-process worker: single results and their states."""

from __future__ import annotations

import json
import sys
import uuid

import psycopg
import pytest
from celery import states
from celery.exceptions import TaskRevokedError, TimeoutError

from swf_celery.results.backend import SwfBackend
from tests.helpers import sql, swf_url, wait_until


def _row(url: str, task_id: str) -> tuple | None:
    rows = sql(url, "SELECT status, name, worker, queue, retries, expires_at IS NOT NULL, "
                    "date_done IS NOT NULL FROM swf.task_results WHERE task_id = %s", (task_id,))
    return rows[0] if rows else None


def test_entry_point_selects_backend(celery_app):
    assert isinstance(celery_app.backend, SwfBackend)
    assert celery_app.backend.supports_native_join


def test_result_and_extended_fields(celery_app, worker, backend_db):
    result = celery_app.tasks["t.add"].delay(2, 3)
    assert result.get(timeout=30) == 5
    fresh = celery_app.AsyncResult(result.id)
    assert (fresh.state, fresh.name, fresh.args, fresh.kwargs) == (
        states.SUCCESS, "t.add", [2, 3], {})
    assert fresh.worker and worker.hostname.endswith(fresh.worker)
    assert fresh.queue == celery_app.conf.task_default_queue
    assert fresh.retries == 0
    assert fresh.date_done is not None
    # The same facts are columns, for SQL.
    status, name, worker_name, queue, retries, expires, done = _row(backend_db, result.id)
    assert (status, name, worker_name, queue, retries, expires, done) == (
        "SUCCESS", "t.add", fresh.worker, celery_app.conf.task_default_queue, 0, True, True)


def test_failure_is_raised_with_its_type(celery_app, worker):
    result = celery_app.tasks["t.fail"].delay("boom")
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=30)
    assert result.state == states.FAILURE
    assert "ValueError" in result.traceback


def test_payload_larger_than_notify_limit(celery_app, worker):
    result = celery_app.tasks["t.big"].delay(100_000)
    assert result.get(timeout=30) == "x" * 100_000


def test_get_timeout_raises(celery_app, worker, tmp_path):
    flag = tmp_path / "later"
    result = celery_app.tasks["t.wait_for_file"].delay(str(flag), "late")
    with pytest.raises(TimeoutError):
        result.get(timeout=0.3)
    flag.touch()  # the same result can still be waited for afterwards
    assert result.get(timeout=30) == "late"


def test_task_track_started_state(celery_app, worker, tmp_path):
    flag = tmp_path / "go"
    result = celery_app.tasks["t.wait_for_file"].delay(str(flag), "done")
    wait_until(lambda: celery_app.AsyncResult(result.id).state == states.STARTED,
               what="STARTED state")
    flag.touch()
    assert result.get(timeout=30) == "done"
    assert result.state == states.SUCCESS


def test_retry_state(celery_app, worker, tmp_path, backend_db):
    flag = tmp_path / "go"
    result = celery_app.tasks["t.retry_until_file"].delay(str(flag), "retried")
    wait_until(lambda: celery_app.AsyncResult(result.id).state == states.RETRY,
               what="RETRY state")
    assert _row(backend_db, result.id)[0] == "RETRY"
    flag.touch()
    assert result.get(timeout=30) == "retried"
    assert celery_app.AsyncResult(result.id).retries >= 1


def test_revoked_state(celery_app, worker):
    task_id = str(uuid.uuid4())
    replies = celery_app.control.revoke(task_id, reply=True, timeout=5, limit=1)
    assert replies, "the worker did not acknowledge the revoke"
    result = celery_app.tasks["t.add"].apply_async((1, 1), task_id=task_id)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=30)
    assert result.state == states.REVOKED


def test_forget(celery_app, worker, backend_db):
    result = celery_app.tasks["t.add"].delay(1, 1)
    assert result.get(timeout=30) == 2
    assert _row(backend_db, result.id) is not None
    result.forget()
    assert _row(backend_db, result.id) is None
    assert celery_app.AsyncResult(result.id).state == states.PENDING


def test_success_is_not_overwritten(celery_app, worker):
    result = celery_app.tasks["t.add"].delay(1, 2)
    assert result.get(timeout=30) == 3
    # A redelivered copy of the finished task reports STARTED: the SUCCESS stays.
    celery_app.backend.store_result(result.id, {"pid": 1}, states.STARTED)
    assert celery_app.backend.get_task_meta(result.id, cache=False)["status"] == states.SUCCESS


def test_backend_cleanup_deletes_expired_rows(celery_app, worker, backend_db):
    keep = celery_app.tasks["t.add"].delay(1, 1)
    assert keep.get(timeout=30) == 2
    old = [celery_app.tasks["t.add"].delay(i, 0) for i in range(5)]
    for r in old:
        r.get(timeout=30)
    group = celery_app.GroupResult(str(uuid.uuid4()), old)
    group.save()
    with psycopg.connect(backend_db) as conn:
        conn.execute("UPDATE swf.task_results SET expires_at = now() - interval '1 second' "
                     "WHERE task_id = ANY(%s)", ([r.id for r in old],))
        conn.execute("UPDATE swf.group_results SET expires_at = now() - interval '1 second' "
                     "WHERE group_id = %s", (group.id,))
    backend = celery_app.backend
    backend.cleanup_batch = 2  # several batches
    try:
        celery_app.tasks["celery.backend_cleanup"].delay().get(timeout=30)
    finally:
        backend.cleanup_batch = 10000
    assert all(_row(backend_db, r.id) is None for r in old)
    assert _row(backend_db, keep.id) is not None
    assert celery_app.GroupResult.restore(group.id, backend=backend) is None


def test_tampered_row_loads_as_generic_exception(celery_app, worker, backend_db, tmp_path):
    result = celery_app.tasks["t.fail"].delay("original")
    with pytest.raises(ValueError):
        result.get(timeout=30)
    marker = tmp_path / "pwned"
    cases = [
        # an existing module and a callable that is not an exception (CVE-2021-23727)
        {"exc_module": "os", "exc_type": "system", "exc_message": [f"touch {marker}"]},
        # a module nobody imported: importing it would run its code
        {"exc_module": "antigravity", "exc_type": "Boom", "exc_message": ["x"]},
        # a dotted path walking through module attributes
        {"exc_module": "os", "exc_type": "path.join", "exc_message": ["a", "b"]},
    ]
    for exc in cases:
        meta = {"status": "FAILURE", "result": exc, "traceback": None, "children": [],
                "date_done": None, "task_id": result.id}
        with psycopg.connect(backend_db) as conn:
            conn.execute("UPDATE swf.task_results SET payload = %s WHERE task_id = %s",
                         (json.dumps(meta).encode(), result.id))
        fresh = celery_app.AsyncResult(result.id)
        loaded = fresh.result
        assert isinstance(loaded, Exception)
        assert type(loaded).__module__ == "celery.exceptions"
        assert type(loaded).__name__ == exc["exc_type"].rsplit(".", 1)[-1]
        with pytest.raises(Exception) as info:
            fresh.get(timeout=5)
        assert type(info.value) is type(loaded) or type(info.value).__name__ == \
            type(loaded).__name__
    assert "antigravity" not in sys.modules
    assert not marker.exists()


def test_real_exception_classes_still_load(celery_app):
    backend = celery_app.backend
    exc = backend.exception_to_python(
        {"exc_module": "builtins", "exc_type": "KeyError", "exc_message": ["k"]})
    assert isinstance(exc, KeyError)


def test_group_save_restore_delete(celery_app, worker):
    results = [celery_app.tasks["t.add"].delay(i, i) for i in range(3)]
    group = celery_app.GroupResult(str(uuid.uuid4()), results)
    group.save()
    restored = celery_app.GroupResult.restore(group.id, backend=celery_app.backend)
    assert [r.id for r in restored.results] == [r.id for r in results]
    assert restored.join_native(timeout=30) == [0, 2, 4]
    restored.delete()
    assert celery_app.GroupResult.restore(group.id, backend=celery_app.backend) is None


def test_unreadable_url_is_a_clear_error(celery_app):
    from swf_celery.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="swf://"):
        SwfBackend(app=celery_app, url="not a url")


def test_transport_options(celery_app, backend_db):
    from celery import Celery

    from swf_celery.errors import ConfigurationError

    app = Celery("sync_commit", set_as_current=False)
    app.conf.result_backend_transport_options = {"synchronous_commit": "sometimes"}
    with pytest.raises(ConfigurationError, match="synchronous_commit='sometimes'"):
        SwfBackend(app=app, url=swf_url(backend_db))
    app.conf.result_backend_transport_options = {"pool_size": "many"}
    with pytest.raises(ConfigurationError, match="pool_size='many'"):
        SwfBackend(app=app, url=swf_url(backend_db))
    app.conf.result_backend_transport_options = {"synchronous_commit": "on"}
    backend = SwfBackend(app=app, url=swf_url(backend_db))
    try:
        backend.store_result("sync-on", {"stored": True}, states.SUCCESS)
        assert backend.get_task_meta("sync-on")["result"] == {"stored": True}
    finally:
        backend.close()


def test_compressed_results_round_trip(backend_db):
    from celery import Celery

    app = Celery("compressed", set_as_current=False)
    app.conf.result_compression = "gzip"
    backend = SwfBackend(app=app, url=swf_url(backend_db))
    try:
        backend.store_result("gz", "y" * 50_000, states.SUCCESS)
        with psycopg.connect(backend_db) as conn:
            size = conn.execute("SELECT octet_length(payload) FROM swf.task_results "
                                "WHERE task_id = 'gz'").fetchone()[0]
        assert size < 5_000
        assert backend.get_task_meta("gz")["result"] == "y" * 50_000
    finally:
        backend.close()


def test_result_stored_while_listener_was_cut_off_is_not_missed(celery_app, backend_db):
    from swf_celery.results.consumer import APPLICATION_NAME

    backend = celery_app.backend
    waiting = celery_app.AsyncResult(str(uuid.uuid4()))
    backend.result_consumer.consume_from(waiting.id)
    backend.result_consumer.drain_events(timeout=0.01)  # the listener connects
    with psycopg.connect(backend_db, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database() AND pid = %s",
            (APPLICATION_NAME, backend.result_consumer._listener.backend_pid)).fetchone()[0]
    assert killed == 1
    # Stored while nobody listens: its NOTIFY reaches no one. Only the consumer (not a
    # read by get()) may deliver it here: it must notice the lost connection, reconnect
    # and read what it still waits for.
    backend.store_result(waiting.id, "stored meanwhile", states.SUCCESS)
    backend.add_pending_result(waiting)
    for _ in range(40):
        if waiting._cache is not None:
            break
        backend.result_consumer.drain_events(timeout=0.25)
    assert waiting._cache is not None and waiting._cache["result"] == "stored meanwhile"
    assert waiting.get(timeout=1) == "stored meanwhile"
