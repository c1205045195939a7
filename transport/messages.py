"""Broker messages as data: the checks and readings the channel needs, pure (no I/O).

- :func:`malformed` says why a stored message cannot be handed to kombu (it is then
  dead-lettered with that reason), or None;
- :func:`revoked_task_ids` reads the task ids out of a pidbox ``revoke`` broadcast, so a
  revoke also deletes the task's queued message;
- :func:`revoked_stamps` reads the stamps out of a ``revoke_by_stamped_headers`` broadcast
  to all workers, so that the revoke is recorded;
- :func:`eta_delay` turns a message's ETA into the seconds PostgreSQL keeps it hidden;
- :func:`idempotency` reads a message's idempotency key (header ``idempotency_key``), its
  window and the task id that claims it;
- :func:`storable_properties` leaves out the publish properties JSON cannot carry, which an
  AMQP transport leaves out too (it sends only the AMQP basic properties).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from typing import Any

_JSON_TYPES = ("application/json",)
_BODY_ENCODINGS = (None, "", "utf-8", "UTF-8", "base64")
_SCALARS = (str, int, bool, type(None))
#: Seconds an idempotency key holds when the message names no window (a day).
DEFAULT_IDEMPOTENCY_WINDOW = 86400.0


def eta_delay(message: dict[str, Any], threshold: float) -> int:
    """Whole seconds to keep ``message`` hidden: its ETA when more than ``threshold``
    seconds away (nearer ETAs wait in worker memory), else 0."""
    eta = (message.get("headers") or {}).get("eta")
    if not eta or not isinstance(eta, str):
        return 0
    try:
        when = dt.datetime.fromisoformat(eta)
    except ValueError:
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    seconds = (when - dt.datetime.now(dt.timezone.utc)).total_seconds()
    if seconds <= threshold:
        return 0
    # Floor: the worker receives it at most a second early and waits out the rest.
    return int(seconds)


def malformed(message: Any) -> str | None:
    """Why ``message`` cannot be handed to kombu, or None when it can."""
    if not isinstance(message, dict):
        return f"not an object but {type(message).__name__}"
    props = message.get("properties")
    if not isinstance(props, dict):
        return "no properties object"
    if not isinstance(props.get("delivery_info", {}), dict):
        return "properties.delivery_info is not an object"
    body = message.get("body")
    if body is not None and not isinstance(body, str):
        return f"body is {type(body).__name__}, not a string"
    encoding = props.get("body_encoding")
    if encoding not in _BODY_ENCODINGS:
        return f"unknown body_encoding {encoding!r}"
    if body and encoding == "base64":
        try:
            raw: str | bytes = base64.b64decode(body.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            return f"body is not base64: {exc}"
    else:
        raw = body or ""
    content_type = message.get("content-type")
    if content_type in _JSON_TYPES:
        try:
            json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return f"body is not JSON: {exc}"
    return None


def _control_command(message: dict[str, Any], method: str) -> dict[str, Any] | None:
    """The JSON body of a pidbox broadcast of ``method``, else None."""
    if message.get("content-type") not in _JSON_TYPES:
        return None
    try:
        body = message.get("body") or ""
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode("utf-8")
        command = json.loads(body)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None
    if not isinstance(command, dict) or command.get("method") != method:
        return None
    return command


def revoked_task_ids(message: dict[str, Any]) -> list[str] | None:
    """Task ids of a pidbox ``revoke`` broadcast, else None."""
    command = _control_command(message, "revoke")
    if command is None:
        return None
    ids = (command.get("arguments") or {}).get("task_id")
    if isinstance(ids, str):
        return [ids]
    if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        return ids
    return None


def revoked_stamps(message: dict[str, Any]) -> dict[str, Any] | None:
    """The stamps of a pidbox ``revoke_by_stamped_headers`` broadcast to every worker (stamp
    name -> value or list of values, as Celery's worker reads them), else None.

    Celery also takes the headers as a list of ``"name=value"`` strings; they are read the
    same way. A broadcast to named workers (``destination``) is theirs alone: None.
    """
    command = _control_command(message, "revoke_by_stamped_headers")
    if command is None or command.get("destination"):
        return None
    headers = (command.get("arguments") or {}).get("headers")
    if isinstance(headers, list) and all(isinstance(h, str) and "=" in h for h in headers):
        headers = {h.split("=")[0]: h.split("=")[1] for h in headers}
    if not isinstance(headers, dict) or not headers:
        return None
    return headers


def storable_properties(properties: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``properties`` without the values JSON (as PostgreSQL's jsonb takes it) cannot carry,
    and the names left out.

    kombu's ``Producer.publish(**properties)`` passes any extra keyword as a message
    property. py-amqp encodes only the AMQP basic properties and silently drops the rest
    (``amqp.serialization.GenericContent._serialize_properties``), so a property such as a
    Python object reaches RabbitMQ as if never given; a JSON message would instead fail the
    whole publish. Properties JSON can carry are kept as published (kombu's Redis transport
    keeps them too). ``properties`` itself is not changed.
    """
    dropped = [name for name, value in properties.items() if not _json_value(value)]
    if not dropped:
        return properties, dropped
    return {k: v for k, v in properties.items() if k not in dropped}, dropped


def _json_value(value: Any) -> bool:
    """Whether ``value`` encodes as JSON that PostgreSQL accepts (no NaN or infinity)."""
    if isinstance(value, _SCALARS):
        return True
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def idempotency(message: dict[str, Any]) -> dict[str, Any] | None:
    """The parameters of a publish-once (``idempotency_key``, ``task_id``, ``window``) of a
    message whose header ``idempotency_key`` is a non-empty text, else None.

    The window is the header ``idempotency_window`` (seconds > 0), else a day. The id that
    claims the key is the task id (Celery's header ``id``), else the correlation id.
    """
    headers = message.get("headers")
    if not isinstance(headers, dict):
        return None
    key = headers.get("idempotency_key")
    if not isinstance(key, str) or not key:
        return None
    window = headers.get("idempotency_window")
    if not isinstance(window, int | float) or isinstance(window, bool) or window <= 0:
        window = DEFAULT_IDEMPOTENCY_WINDOW
    props = message.get("properties") or {}
    task_id = headers.get("id") or props.get("correlation_id") or props.get("delivery_tag")
    return {"idempotency_key": key, "task_id": str(task_id), "window": float(window)}
