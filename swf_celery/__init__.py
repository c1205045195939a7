"""swf-celery: PostgreSQL-backed DAG workflows for Celery.

Importing the package registers the ``swf://`` kombu transport alias, so a Celery app
that does ``import swf_celery`` can use ``broker_url="swf://user@host/db"``, and registers
the workflow step runner task (``swf_celery.step``) with every Celery app
(:mod:`swf_celery.workflows.registration`). The public
API below is imported lazily on first use (so the transport and result backend load
without the workflow layer) and typed for checkers through the ``TYPE_CHECKING`` imports.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from kombu.transport import TRANSPORT_ALIASES

from swf_celery.errors import SwfError
from swf_celery.ops import retention_worker as _retention_worker

# kombu has no entry point for transports: registering the alias on import is the
# documented way (kombu.transport.TRANSPORT_ALIASES). kombu's own "pgmq" alias is untouched.
TRANSPORT_ALIASES["swf"] = "swf_celery.transport:Transport"

# Workers of an app on our database clean up finished runs, archives and expired results
# (a bootstep added on Celery's celeryd_init signal; see swf_celery.ops.retention_worker).
_retention_worker.connect()

# Publishes get their flow keys and idempotency keys; workers on swf:// leave the rate limits
# the broker enforces to the broker (swf_celery.limits).
from swf_celery import limits as _limits  # noqa: E402

_limits.connect()

# A group (and a chord's header) on swf:// is stored in one insert per queue, not one round
# trip per task (swf_celery.group_publish; inert on other brokers).
from swf_celery import group_publish as _group_publish  # noqa: E402

_group_publish.connect()

# Every Celery app gets the workflow step runner (and the timeout sweeper) when it is
# finalised, so a worker whose app imports only swf_celery and its tasks runs steps.
from swf_celery.workflows import registration as _registration  # noqa: E402,F401

__version__ = "0.1.0"

if TYPE_CHECKING:
    from swf_celery import schedules
    from swf_celery.db.transaction import transaction
    from swf_celery.errors import (
        UnknownSignal,
        WorkflowDefinitionError,
        WorkflowFailed,
        WorkflowTimeout,
    )
    from swf_celery.goals.decomposers import LLMDecomposer, RuleDecomposer
    from swf_celery.goals.orchestrator import GoalResult, Orchestrator, WorkflowComposer
    from swf_celery.limits.holds import HeldKey, held_keys, hold_key, release_key
    from swf_celery.limits.idempotency import Task
    from swf_celery.messaging.listen import Listener, Notification, alisten, listen, unlisten
    from swf_celery.messaging.send import (
        Message,
        acknowledge,
        get_message,
        notify_only,
        read_pending,
        send_with_notify,
    )
    from swf_celery.ops.canvas import cancel_canvas
    from swf_celery.ops.doctor import doctor
    from swf_celery.workflows.definition import WorkflowDef
    from swf_celery.workflows.executor import Executor, RunResult
    from swf_celery.workflows.flows import FlowBuilder
    from swf_celery.workflows.lifecycle import (
        RunStatus,
        RunSummary,
        cancel_workflow_run,
        get_run_status,
        list_workflow_runs,
        pause_workflow_run,
        replay,
        resume_workflow_run,
        retry_failed_workflow,
        signal,
    )
    from swf_celery.workflows.statistics import FlowStatistics, workflow_statistics
    from swf_celery.workflows.steps import Step, step

# Public name -> the module that defines it, imported on first access (module __getattr__).
_LAZY = {
    # messaging
    "send_with_notify": "swf_celery.messaging.send",
    "notify_only": "swf_celery.messaging.send",
    "get_message": "swf_celery.messaging.send",
    "read_pending": "swf_celery.messaging.send",
    "acknowledge": "swf_celery.messaging.send",
    "Message": "swf_celery.messaging.send",
    "listen": "swf_celery.messaging.listen",
    "alisten": "swf_celery.messaging.listen",
    "unlisten": "swf_celery.messaging.listen",
    "Listener": "swf_celery.messaging.listen",
    "Notification": "swf_celery.messaging.listen",
    # workflows
    "step": "swf_celery.workflows.steps",
    "Step": "swf_celery.workflows.steps",
    "WorkflowDef": "swf_celery.workflows.definition",
    "Executor": "swf_celery.workflows.executor",
    "RunResult": "swf_celery.workflows.executor",
    "FlowBuilder": "swf_celery.workflows.flows",
    "WorkflowFailed": "swf_celery.errors",
    "WorkflowTimeout": "swf_celery.errors",
    "WorkflowDefinitionError": "swf_celery.errors",
    "UnknownSignal": "swf_celery.errors",
    # run lifecycle
    "get_run_status": "swf_celery.workflows.lifecycle",
    "list_workflow_runs": "swf_celery.workflows.lifecycle",
    "pause_workflow_run": "swf_celery.workflows.lifecycle",
    "resume_workflow_run": "swf_celery.workflows.lifecycle",
    "cancel_workflow_run": "swf_celery.workflows.lifecycle",
    "retry_failed_workflow": "swf_celery.workflows.lifecycle",
    "signal": "swf_celery.workflows.lifecycle",
    "replay": "swf_celery.workflows.lifecycle",
    "workflow_statistics": "swf_celery.workflows.statistics",
    "FlowStatistics": "swf_celery.workflows.statistics",
    "RunStatus": "swf_celery.workflows.lifecycle",
    "RunSummary": "swf_celery.workflows.lifecycle",
    "cancel_canvas": "swf_celery.ops.canvas",
    # flow control, idempotent publish, the caller's transaction
    "transaction": "swf_celery.db.transaction",
    "hold_key": "swf_celery.limits.holds",
    "release_key": "swf_celery.limits.holds",
    "held_keys": "swf_celery.limits.holds",
    "HeldKey": "swf_celery.limits.holds",
    "Task": "swf_celery.limits.idempotency",
    # operations
    "doctor": "swf_celery.ops.doctor",
    # goals
    "Orchestrator": "swf_celery.goals.orchestrator",
    "WorkflowComposer": "swf_celery.goals.orchestrator",
    "GoalResult": "swf_celery.goals.orchestrator",
    "RuleDecomposer": "swf_celery.goals.decomposers",
    "LLMDecomposer": "swf_celery.goals.decomposers",
}

__all__ = [
    "SwfError",
    "schedules",
    "__version__",
    "send_with_notify",
    "notify_only",
    "get_message",
    "read_pending",
    "acknowledge",
    "Message",
    "listen",
    "alisten",
    "unlisten",
    "Listener",
    "Notification",
    "step",
    "Step",
    "WorkflowDef",
    "Executor",
    "RunResult",
    "FlowBuilder",
    "WorkflowFailed",
    "WorkflowTimeout",
    "WorkflowDefinitionError",
    "UnknownSignal",
    "get_run_status",
    "list_workflow_runs",
    "pause_workflow_run",
    "resume_workflow_run",
    "cancel_workflow_run",
    "retry_failed_workflow",
    "signal",
    "replay",
    "workflow_statistics",
    "FlowStatistics",
    "RunStatus",
    "RunSummary",
    "cancel_canvas",
    "transaction",
    "hold_key",
    "release_key",
    "held_keys",
    "HeldKey",
    "Task",
    "doctor",
    "Orchestrator",
    "WorkflowComposer",
    "GoalResult",
    "RuleDecomposer",
    "LLMDecomposer",
]


#: Subpackages reached as attributes (``swf.schedules.add(...)``), imported on first access.
_SUBPACKAGES = {"schedules"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return import_module(f"swf_celery.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'swf_celery' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBPACKAGES)
