"""Which flow key and limits a task message carries: the publisher decides, pure (no I/O).

A message's flow (header ``swf_flow``: ``{"key", "rate", "burst", "concurrency"}``) comes,
first match wins per field, from

1. the task: its key (the header ``swf_key`` given to ``apply_async``, else the task option
   ``swf_key``, a text or a function of the task's arguments run here, at publish time),
   Celery's own ``rate_limit`` (its syntax, ``"10/s"``, ``"100/m"``) and the options
   ``swf_concurrency`` and ``swf_burst``;
2. the setting ``swf_flow_limits``: ``{pattern: {"rate": "50/s", "concurrency": 3,
   "burst": 10}}``, patterns as :mod:`fnmatch` has them (``"tenant:*"``);
3. the setting ``swf_queue_limits``: ``{queue: {...}}`` for messages of that queue.

A task with limits but no key of its own uses ``task:<name>``; a queue's limits with no other
key use ``queue:<name>``. The limits travel with each message, so workers need no setting;
the read that delivers enforces them for the whole cluster (``swf.queue_read_limited``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from celery.utils.time import rate as celery_rate

from swf_celery.errors import ConfigurationError

#: Celery settings read here.
FLOW_LIMITS_SETTING = "swf_flow_limits"
QUEUE_LIMITS_SETTING = "swf_queue_limits"
#: Longest key the broker keeps (bytes of UTF-8).
KEY_LIMIT = 255


def per_second(value: Any, what: str) -> float | None:
    """A rate in Celery's syntax (``"10/s"``, ``"100/m"``, ``"2/h"``, a number per second)
    as tokens per second, or None for no limit."""
    if value in (None, "", 0):
        return None
    try:
        result = float(celery_rate(value))
    except (KeyError, ValueError, TypeError):
        raise ConfigurationError(f"{what} = {value!r} is not a rate like '10/s', '100/m' or "
                                 "'2/h'") from None
    if result < 0:
        raise ConfigurationError(f"{what} = {value!r} must not be negative")
    return result or None


def limits_of(spec: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The limits a setting entry names (``rate``, ``burst``, ``concurrency``), checked."""
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"{what} must be a dict like {{'rate': '10/s', "
                                 f"'concurrency': 3}}, not {type(spec).__name__}")
    unknown = set(spec) - {"rate", "burst", "concurrency"}
    if unknown:
        raise ConfigurationError(f"{what} names unknown limits {sorted(unknown)}: use rate, "
                                 "burst, concurrency")
    out: dict[str, Any] = {}
    rate = per_second(spec.get("rate"), f"{what}['rate']")
    if rate is not None:
        out["rate"] = rate
    for name in ("burst", "concurrency"):
        value = spec.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
            raise ConfigurationError(f"{what}[{name!r}] = {value!r} must be a number >= 1")
        out[name] = int(value) if name == "concurrency" else float(value)
    return out


def flow_for(task: Any, name: str, args: Any, kwargs: Any, headers: Mapping[str, Any],
             queue: str | None, conf: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``swf_flow`` header of a message of task ``name`` (``task``: the task object when
    this app knows it), or None when nothing limits it."""
    key = headers.get("swf_key")
    limits: dict[str, Any] = {}
    if task is not None:
        if key is None:
            key = _derived(task, "swf_key", args, kwargs)
        task_limits = {"rate": getattr(task, "rate_limit", None),
                       "concurrency": getattr(task, "swf_concurrency", None),
                       "burst": getattr(task, "swf_burst", None)}
        limits = limits_of({k: v for k, v in task_limits.items() if v is not None},
                           f"task {name!r} option")
        if key is None and limits:
            key = f"task:{name}"
    queue_limits = (conf.get(QUEUE_LIMITS_SETTING) or {}).get(queue) if queue else None
    if key is None and queue_limits is not None:
        key = f"queue:{queue}"
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key.encode()) > KEY_LIMIT:
        raise ConfigurationError(f"flow key {key!r} of task {name!r} must be a text of 1 to "
                                 f"{KEY_LIMIT} bytes")
    for pattern, spec in (conf.get(FLOW_LIMITS_SETTING) or {}).items():
        if fnmatchcase(key, pattern):
            for field, value in limits_of(spec, f"{FLOW_LIMITS_SETTING}[{pattern!r}]").items():
                limits.setdefault(field, value)
            break
    if queue_limits is not None:
        for field, value in limits_of(queue_limits,
                                      f"{QUEUE_LIMITS_SETTING}[{queue!r}]").items():
            limits.setdefault(field, value)
    return {"key": key, **limits}


def idempotency_key_for(task: Any, args: Any, kwargs: Any,
                        headers: Mapping[str, Any] | None) -> str | None:
    """A message's idempotency key: the header ``idempotency_key``, else the task option of
    that name (a text, or a function of the task's arguments)."""
    key = (headers or {}).get("idempotency_key")
    if key is None and task is not None:
        key = _derived(task, "idempotency_key", args, kwargs)
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key.encode()) > 512:
        raise ConfigurationError(f"idempotency key {key!r} must be a text of 1 to 512 bytes")
    return key


def _derived(task: Any, option: str, args: Any, kwargs: Any) -> Any:
    """Task option ``option``: a value, or a function of the task's arguments called with
    them (the option as given: a function stored on the task class is not a method)."""
    value = inspect.getattr_static(task, option, None)
    if isinstance(value, staticmethod | classmethod):
        value = value.__func__
    return value(*(args or ()), **(kwargs or {})) if callable(value) else value
