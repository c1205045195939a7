"""Broker messages as data: malformed bodies, revoke broadcasts, ETA delays, storable
properties (pure)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest

from swf_celery.transport.messages import (
    eta_delay,
    malformed,
    revoked_stamps,
    revoked_task_ids,
    storable_properties,
)


def _message(body: str = "[]", **props: Any) -> dict[str, Any]:
    return {"body": body, "content-type": "application/json",
            "properties": {"delivery_info": {}, "body_encoding": "utf-8", **props},
            "headers": {}}


@pytest.mark.parametrize(("message", "reason"), [
    ("text", "not an object but str"),
    ({"body": "[]"}, "no properties object"),
    (_message("{", body_encoding="utf-8"), "body is not JSON"),
    (_message("@@@", body_encoding="base64"), "body is not base64"),
    (_message("[]", body_encoding="rot13"), "unknown body_encoding 'rot13'"),
    ({**_message(), "body": 42}, "body is int, not a string"),
])
def test_malformed_messages_are_named(message: Any, reason: str) -> None:
    problem = malformed(message)
    assert problem is not None and reason in problem


def test_well_formed_messages_pass() -> None:
    assert malformed(_message('{"a": 1}')) is None
    encoded = base64.b64encode(b'[1, 2]').decode()
    assert malformed(_message(encoded, body_encoding="base64")) is None


def _revoke(task_id: Any, *, base64_body: bool = False, method: str = "revoke") -> dict:
    body = json.dumps({"method": method, "arguments": {"task_id": task_id}})
    if base64_body:
        return _message(base64.b64encode(body.encode()).decode(), body_encoding="base64")
    return _message(body)


def test_revoke_broadcasts_give_their_task_ids() -> None:
    assert revoked_task_ids(_revoke("t1")) == ["t1"]
    assert revoked_task_ids(_revoke(["t1", "t2"], base64_body=True)) == ["t1", "t2"]
    assert revoked_task_ids(_revoke("t1", method="ping")) is None
    assert revoked_task_ids(_revoke([1, 2])) is None
    assert revoked_task_ids(_message("not json")) is None


def _stamp_revoke(headers: Any, destination: Any = None) -> dict:
    return _message(json.dumps({"method": "revoke_by_stamped_headers", "destination": destination,
                                "arguments": {"headers": headers, "terminate": False}}))


def test_stamp_revoke_broadcasts_to_every_worker_give_their_stamps() -> None:
    assert revoked_stamps(_stamp_revoke({"m": ["a", 1, None]})) == {"m": ["a", 1, None]}
    assert revoked_stamps(_stamp_revoke({"m": "a"})) == {"m": "a"}
    assert revoked_stamps(_stamp_revoke(["m=a", "n=b"])) == {"m": "a", "n": "b"}  # Celery's CLI
    assert revoked_stamps(_stamp_revoke({"m": "a"}, destination=["w1@h"])) is None
    assert revoked_stamps(_stamp_revoke({})) is None
    assert revoked_stamps(_stamp_revoke("m=a")) is None
    assert revoked_stamps(_revoke("t1")) is None


def test_eta_delay_only_beyond_the_threshold() -> None:
    now = dt.datetime.now(dt.timezone.utc)
    far = {"headers": {"eta": (now + dt.timedelta(seconds=120)).isoformat()}}
    near = {"headers": {"eta": (now + dt.timedelta(seconds=10)).isoformat()}}
    naive = {"headers": {"eta": (now + dt.timedelta(seconds=120)).replace(tzinfo=None)
                         .isoformat()}}
    assert 118 <= eta_delay(far, 30) <= 120
    assert 118 <= eta_delay(naive, 30) <= 120  # a naive ETA is UTC, as Celery sends it
    assert eta_delay(near, 30) == 0
    assert eta_delay({"headers": {"eta": "soon"}}, 30) == 0
    assert eta_delay({"headers": {}}, 30) == 0


def test_storable_properties_leave_out_only_what_json_cannot_carry() -> None:
    props = {"correlation_id": "c", "priority": 0, "n": 1.5, "custom": {"a": [1, None]},
             "signal": object(), "nan": float("nan"), "nested": {"x": object()}}
    kept, dropped = storable_properties(props)
    assert kept == {"correlation_id": "c", "priority": 0, "n": 1.5, "custom": {"a": [1, None]}}
    assert sorted(dropped) == ["nan", "nested", "signal"]
    assert "signal" in props  # the caller's dict is not changed
    plain = {"reply_to": "r"}
    assert storable_properties(plain) == (plain, [])
