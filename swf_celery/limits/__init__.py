"""Flow control and idempotent publish for Celery apps on the ``swf://`` broker.

What no other Celery broker gives, because here the broker is the user's database:

- cluster-wide rate limits (Celery's ``rate_limit``, per key), concurrency keys with fair
  turns between keys, and holds of a key until a time, enforced by the read that delivers
  (``swf.queue_read_limited``; :mod:`.keys` says which key and limits a message carries);
- idempotent publish (:mod:`.idempotency`): ``headers={"idempotency_key": k}`` publishes once
  per key within a window.

``import swf_celery`` calls :func:`connect`: every publish gets its flow header from
Celery's ``before_task_publish`` signal, and every worker on a ``swf://`` broker leaves the
rate limits the broker enforces to the broker (its consumer drops Celery's per-process token
bucket of those tasks, :class:`BrokerLimits`), so a limit is never applied twice. This module
stays cheap to import: the database code loads when first used.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import _state, bootsteps
from celery.signals import before_task_publish

from swf_celery.limits.keys import flow_for, idempotency_key_for

logger = logging.getLogger(__name__)


def _task_of(name: str) -> tuple[Any, Any]:
    """The app that knows task ``name`` (the current one first) and the task, or Nones."""
    current = _state.get_current_app()
    apps = [current, *(a for a in _state._get_active_apps() if a is not current)]
    for app in apps:
        task = app.tasks.get(name) if app.finalized else None
        if task is not None:
            return app, task
    return current, None


def _arguments(body: Any) -> tuple[Any, Any]:
    if isinstance(body, tuple | list) and len(body) >= 2:  # protocol 2: (args, kwargs, embed)
        return body[0], body[1]
    if isinstance(body, dict):  # protocol 1
        return body.get("args"), body.get("kwargs")
    return (), {}


def _before_publish(sender: Any = None, body: Any = None, headers: Any = None,
                    routing_key: Any = None, **_: Any) -> None:
    """Add the message's flow (``swf_flow``) and derived idempotency key to its headers."""
    if not isinstance(headers, dict) or not isinstance(sender, str):
        return
    app, task = _task_of(sender)
    args, kwargs = _arguments(body)
    flow = flow_for(task, sender, args, kwargs, headers, routing_key, app.conf)
    if flow is not None:
        headers["swf_flow"] = flow
    if "idempotency_key" not in headers:
        key = idempotency_key_for(task, args, kwargs, headers)
        if key is not None:
            headers["idempotency_key"] = key
            window = getattr(task, "idempotency_window", None)
            if window is not None:
                headers.setdefault("idempotency_window", window)


def broker_limited(task: Any) -> bool:
    """Whether the broker enforces ``task``'s ``rate_limit`` (every task with one, on swf)."""
    return bool(getattr(task, "rate_limit", None))


class BrokerLimits(bootsteps.StartStopStep):
    """Consumer step: tasks whose rate limit the swf broker enforces for the whole cluster
    get no per-process token bucket as well (Celery's ``rate_limit`` would otherwise apply
    twice: once across the cluster at delivery, then again in each worker process).

    ``celery control rate_limit`` still sets a per-process limit, as on any broker.
    """

    label = "swf broker limits"
    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, parent: Any) -> None:
        """Drop the local buckets of broker-limited tasks (on a ``swf://`` broker only)."""
        transport = getattr(getattr(parent, "connection", None), "transport", None)
        if not type(transport).__module__.startswith("swf_celery.transport"):
            return
        for name, task in parent.app.tasks.items():
            if broker_limited(task):
                parent.task_buckets[name] = None
                logger.debug("swf: rate limit of %s (%s) is enforced by the broker",
                             name, task.rate_limit)


def _install(app: Any) -> None:
    app.steps["consumer"].add(BrokerLimits)


def connect() -> None:
    """Connect the publish hook and the worker step (idempotent; ``import swf_celery``)."""
    before_task_publish.connect(_before_publish, weak=False,
                                dispatch_uid="swf_celery.limits.before_publish")
    _state.connect_on_app_finalize(_install)
    for app in _state._get_active_apps():
        if app.finalized:
            _install(app)


__all__ = ["BrokerLimits", "broker_limited", "connect"]
