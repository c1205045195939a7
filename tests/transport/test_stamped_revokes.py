"""Revokes by stamped header that hold, as revokes by id do: recorded in PostgreSQL, checked
before a stamped message is handed over (a task sent right after the revoke never runs) and
loaded when a worker starts (a worker restarted after the revoke discards the task too).

Real ``celery worker`` processes on swf://; stamps are put on as Celery's users put them,
with a ``StampingVisitor``, and revoked with ``app.control.revoke_by_stamped_headers``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery
from celery.canvas import StampingVisitor
from psycopg.types.json import Jsonb

from swf_celery.transport import revokes
from tests.helpers import (
    pg_url,
    queue_size,
    read_log,
    sql,
    sql_value,
    task_runs,
    wait_until,
    worker_process,
)

APP = "tests.transport.broker_app"


class _Monitoring(StampingVisitor):
    def __init__(self, monitoring_id: str) -> None:
        self.monitoring_id = monitoring_id

    def on_signature(self, sig: Any, **headers: Any) -> dict[str, Any]:
        return {"monitoring_id": self.monitoring_id}


def _send_stamped(client: Celery, tag: str, monitoring_id: str) -> str:
    sig = client.signature("record", args=[tag])
    sig.stamp(visitor=_Monitoring(monitoring_id))
    return str(sig.apply_async().id)


def _discarded(proc: Any, task_id: str) -> bool:
    return f"Discarding revoked task: record[{task_id}] (revoked by header" in read_log(proc)


@pytest.mark.slow
def test_a_task_sent_right_after_a_stamped_revoke_never_runs(
        broker: str, client: Celery) -> None:
    # A worker that takes no broadcasts: only the record can tell it of the revoke, and it
    # reads the task long before it could have read a broadcast.
    with worker_process(APP, env={"SWF_TEST_BROKER": broker, "SWF_TEST_REMOTE_CONTROL": "0"},
                        hostname="deaf@%h") as proc:
        client.control.revoke_by_stamped_headers({"monitoring_id": ["m-1", "m-3"]})
        revoked = _send_stamped(client, "revoked", "m-1")
        _send_stamped(client, "other", "m-2")
        client.send_task("record", args=["plain"])
        wait_until(lambda: _discarded(proc, revoked), what="stamped task discarded", proc=proc)
        wait_until(lambda: {("other", "done"), ("plain", "done")} <= set(task_runs(broker)),
                   what="the other tasks ran", proc=proc)
        wait_until(lambda: queue_size(broker, "celery") == 0, what="messages acked", proc=proc)
    assert ("revoked", "done") not in task_runs(broker)
    assert sql(broker, "SELECT headers FROM swf.revoked_stamps") == [
        ({"monitoring_id": ["m-1", "m-3"]},)]


@pytest.mark.slow
def test_a_stamped_revoke_holds_across_a_worker_restart(broker: str, client: Celery) -> None:
    with worker_process(APP, env={"SWF_TEST_BROKER": broker}, hostname="first@%h") as proc:
        replies = client.control.revoke_by_stamped_headers({"monitoring_id": "m-1"},
                                                           reply=True, timeout=10, limit=1)
        assert replies and any(name.startswith("first@") for r in replies for name in r), \
            read_log(proc)
    # Sent while no worker runs; the next worker's memory knows nothing of the broadcast.
    revoked = _send_stamped(client, "revoked", "m-1")
    _send_stamped(client, "other", "m-2")
    with worker_process(APP, env={"SWF_TEST_BROKER": broker}, hostname="second@%h") as proc:
        wait_until(lambda: _discarded(proc, revoked), what="stamped task discarded", proc=proc)
        wait_until(lambda: ("other", "done") in task_runs(broker), what="other task ran",
                   proc=proc)
    assert ("revoked", "done") not in task_runs(broker)


def test_a_broadcast_to_named_workers_is_not_recorded(broker: str, client: Celery) -> None:
    client.control.revoke_by_stamped_headers({"monitoring_id": "m-1"}, destination=["w@h"])
    client.control.revoke_by_stamped_headers(["monitoring_id=m-2"])  # Celery's list form
    assert sql(broker, "SELECT headers FROM swf.revoked_stamps") == [({"monitoring_id": "m-2"},)]


@pytest.fixture
def worker_memory() -> Iterator[dict[str, Any]]:
    """This process's Celery worker state (as in a worker), its revoked stamps emptied."""
    from celery.worker import state

    state.revoked_stamps.clear()
    yield state.revoked_stamps
    state.revoked_stamps.clear()


def test_a_worker_applies_each_record_once_and_forgets_expired_ones(
        broker: str, worker_memory: dict[str, Any]) -> None:
    assert "celery.worker.state" in sys.modules
    record = "SELECT swf.task_revoke_stamped(%s)"
    with psycopg.connect(pg_url(broker), autocommit=True) as conn:
        conn.execute(record, [Jsonb({"monitoring_id": ["a"]})])
        conn.execute(record, [Jsonb({"monitoring_id": "b", "batch": [1, None]})])
        assert revokes.apply_stamps(conn) == 2
        assert worker_memory == {"monitoring_id": ["a", "b"], "batch": [1, None]}
        # Cleared, as Celery's own tests clear it: a record is not applied again.
        worker_memory.clear()
        assert revokes.apply_stamps(conn) == 0
        assert worker_memory == {}
        conn.execute(record, [Jsonb({"monitoring_id": "c"})])
        assert revokes.apply_stamps(conn) == 1
        assert worker_memory == {"monitoring_id": ["c"]}
        # Older than the worker's revoke expiry: deleted by the next read.
        conn.execute("UPDATE swf.revoked_stamps SET revoked_at = now() - interval '4 hours'")
        assert revokes.apply_stamps(conn) == 0
    assert sql_value(broker, "SELECT count(*) FROM swf.revoked_stamps") == 0


@pytest.mark.parametrize("headers", [None, [], {}, "monitoring_id"])
def test_a_record_needs_stamp_names(broker: str, headers: Any) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="stamp name"):
        sql(broker, "SELECT swf.task_revoke_stamped(%s)",
            (None if headers is None else Jsonb(headers),))
