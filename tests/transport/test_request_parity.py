"""A task message reaches a worker through swf:// as it does through kombu's Redis transport:
the worker's ``Request`` for the same message, field by field.

Each message is published with the same task id, ETA and expiry through both brokers and
caught by a ``task_received`` handler of an in-process worker (Celery's own test worker,
the same hostname for both). Every property of ``celery.worker.request.Request`` is compared,
with the raw message's headers and properties, except what names the transport itself (see
:data:`TRANSPORT_OWN`).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.canvas import StampingVisitor
from celery.contrib.testing.worker import start_worker
from celery.signals import task_received
from celery.worker.request import Request

import swf_celery  # noqa: F401 - registers swf://
from tests.helpers import REDIS_URL, swf_url, wait_until

#: Request properties that are the transport's or the worker's own objects, not the
#: message's: compared through what they carry (delivery_info below) or not at all.
TRANSPORT_OWN = {
    "app",                # each side's Celery app
    "connection_errors",  # the transport's exception classes
    "eventer",            # each worker's event dispatcher
    "on_ack", "on_reject",  # callbacks bound to each channel
    "message",            # the kombu Message: compared as headers/properties/body below
    "task",               # each app's task object: compared by name
    "delivery_info",      # compared below: Redis' keys, equal, plus swf's own
    "request_dict",       # compared below without delivery_info
}
#: Properties that differ per publish whatever the broker: a tag of its own, and the
#: milliseconds left until ``expires`` when it was sent.
PER_PUBLISH = {"delivery_tag", "expiration", "delivery_info"}
#: Each app's own reply queue is its default ``reply_to``: the messages name one.
REPLY_TO = "parity.replies"


class _Stamp(StampingVisitor):
    def on_signature(self, sig: Any, **headers: Any) -> dict[str, Any]:
        return {"monitoring_id": "m-42", "batch": [1, "two", None]}


#: The messages of :func:`_messages`.
KINDS = ("plain", "full", "stamped", "replaced", "canvas")


def _messages(app: Celery, queue: str, ids: dict[str, str]) -> list[tuple[str, Any]]:
    """(task id, a function sending it on ``app``) for messages that use, between them,
    every field Celery's protocol 2 sets."""
    probe = app.tasks["parity.probe"]
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)

    def plain() -> None:
        probe.si(4, 2).apply_async(task_id=ids["plain"], queue=queue, reply_to=REPLY_TO)

    def full() -> None:
        probe.apply_async(
            args=(1, "zwei", [3.5, None], {"vier": True}), kwargs={"k": "ü", "n": 2 ** 40},
            task_id=ids["full"], queue=queue, priority=3,
            eta=dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), expires=when,
            time_limit=30, soft_time_limit=20, shadow="shadowed-name",
            headers={"x-custom": {"nested": [1, 2]}, "x-flag": False},
            reply_to="reply.queue",
            root_id="root-1", parent_id="parent-1", group_id="group-1", group_index=2,
            retries=1, ignore_result=True, argsrepr="(args)", kwargsrepr="{kwargs}")

    def stamped() -> None:
        sig = probe.si(1, 1).set(queue=queue)
        sig.stamp(visitor=_Stamp())
        sig.apply_async(task_id=ids["stamped"], reply_to=REPLY_TO)

    def replaced() -> None:
        probe.si(5, 5).apply_async(task_id=ids["replaced"], queue=queue, reply_to=REPLY_TO,
                                   replaced_task_nesting=2)

    def canvas() -> None:
        link = probe.si(0, 1).set(queue=queue)
        probe.apply_async((2, 3), task_id=ids["canvas"], queue=queue, reply_to=REPLY_TO,
                          link=link,
                          link_error=probe.si(0, 2), chain=[probe.si(9, 9)])

    return [(ids["plain"], plain), (ids["full"], full), (ids["stamped"], stamped),
            (ids["replaced"], replaced), (ids["canvas"], canvas)]


def _app(broker: str, queue: str) -> Celery:
    app = Celery("parity", broker=broker, set_as_current=False)
    app.conf.update(task_default_queue=queue, worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True, task_create_missing_queues=True,
                    broker_transport_options={"visibility_timeout": 60})

    @app.task(name="parity.probe", shared=False)
    def probe(*args: Any, **kwargs: Any) -> None:
        return None

    return app


def _received(broker: str, queue: str, ids: dict[str, str]) -> dict[str, Request]:
    """The Request of each message of :func:`_messages` as a worker on ``broker`` got it."""
    app = _app(broker, queue)
    got: dict[str, Request] = {}
    lock = threading.Lock()

    def on_received(sender: Any = None, request: Request | None = None, **_: Any) -> None:
        if request is not None and request.id in ids.values():
            with lock:
                got[request.id] = request

    task_received.connect(on_received, weak=False)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                          hostname="parity@test", shutdown_timeout=20, queues=[queue]):
            sends = _messages(app, queue, ids)
            for _, send in sends:
                send()
            wait_until(lambda: len(got) >= len(sends), timeout=60,
                       what=f"{len(sends)} messages received on {broker.split(':')[0]}")
    finally:
        task_received.disconnect(on_received)
        app.close()
    return got


def _same_each_publish(properties: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in properties.items() if k not in PER_PUBLISH}


def _fields(request: Request) -> dict[str, Any]:
    names = [n for n in dir(Request) if isinstance(getattr(Request, n), property)]
    fields = {n: getattr(request, n) for n in names if n not in TRANSPORT_OWN}
    fields["task"] = request.task.name
    fields["request_dict"] = {k: v for k, v in request.request_dict.items()
                              if k not in ("delivery_info", "properties")}
    fields["request_dict.properties"] = _same_each_publish(
        request.request_dict.get("properties", {}))
    message = request.message
    fields["message.headers"] = message.headers
    fields["message.properties"] = _same_each_publish(message.properties)
    fields["message.content_type"] = message.content_type
    fields["message.content_encoding"] = message.content_encoding
    fields["message.body"] = message.body
    return fields


@pytest.fixture
def queue(redis_client: Any) -> Iterator[str]:
    name = f"parity_{uuid.uuid4().hex[:8]}"
    yield name
    for key in redis_client.scan_iter(match=f"{name}*"):
        redis_client.delete(key)


def test_a_request_is_the_same_on_swf_as_on_redis(db_url: str, queue: str) -> None:
    ids = {kind: f"parity-{kind}-{uuid.uuid4().hex[:8]}" for kind in KINDS}
    on_redis = _received(REDIS_URL, queue, ids)
    on_swf = _received(swf_url(db_url), queue, ids)
    assert on_swf.keys() == on_redis.keys() == set(ids.values())
    differences = []
    for task_id, redis_request in on_redis.items():
        swf_request = on_swf[task_id]
        expected, got = _fields(redis_request), _fields(swf_request)
        assert got.keys() == expected.keys()
        differences += [f"{task_id} {name}: swf {got[name]!r} != redis {expected[name]!r}"
                        for name in expected if got[name] != expected[name]]
        redis_info, swf_info = redis_request.delivery_info, swf_request.delivery_info
        differences += [f"{task_id} delivery_info[{key!r}]: swf {swf_info.get(key)!r} "
                        f"!= redis {value!r}" for key, value in redis_info.items()
                        if swf_info.get(key) != value]
    assert not differences, "\n".join(differences)
    # What this compares is not vacuous: the fields under test are set.
    full = next(r for i, r in on_swf.items() if "-full-" in i)
    assert full.replaced_task_nesting == 0 and full.expires and full.eta
    assert full.message.headers["x-custom"] == {"nested": [1, 2]}
    replaced = next(r for i, r in on_swf.items() if "-replaced-" in i)
    assert replaced.replaced_task_nesting == 2
    stamped = next(r for i, r in on_swf.items() if "-stamped-" in i)
    assert stamped.stamps == {"monitoring_id": "m-42", "batch": [1, "two", None]}
