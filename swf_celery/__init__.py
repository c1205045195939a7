"""swf-celery: PostgreSQL-backed DAG workflows for Celery.

Importing the package registers the ``swf://`` kombu transport alias, so a Celery app
that does ``import swf_celery`` can use ``broker_url="swf://user@host/db"``. The
workflow API is imported lazily (``swf_celery.Executor`` etc.) so that the transport
and result backend load without the workflow layer.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from kombu.transport import TRANSPORT_ALIASES

from swf_celery.errors import SwfError

# kombu has no entry point for transports: registering the alias on import is the
# documented way (kombu.transport.TRANSPORT_ALIASES). kombu's own "pgmq" alias is untouched.
TRANSPORT_ALIASES["swf"] = "swf_celery.transport:Transport"

__version__ = "0.1.0"

# Public names loaded on first access (module __getattr__), so `import swf_celery` stays
# cheap for the transport and the result backend.
_LAZY = {
    # messaging
    "send_with_notify": "swf_celery.messaging",
    "notify_only": "swf_celery.messaging",
    "get_message": "swf_celery.messaging",
    "read_pending": "swf_celery.messaging",
    "acknowledge": "swf_celery.messaging",
    "Message": "swf_celery.messaging",
    "listen": "swf_celery.listener",
    "alisten": "swf_celery.listener",
    "unlisten": "swf_celery.listener",
    "Listener": "swf_celery.listener",
    "Notification": "swf_celery.listener",
    # workflows
    "step": "swf_celery.definition",
    "Step": "swf_celery.definition",
    "WorkflowDef": "swf_celery.definition",
    "Executor": "swf_celery.executor",
    "RunResult": "swf_celery.executor",
    "FlowBuilder": "swf_celery.flows",
    "WorkflowFailed": "swf_celery.errors",
    "WorkflowTimeout": "swf_celery.errors",
    "WorkflowDefinitionError": "swf_celery.errors",
    # run lifecycle
    "get_run_status": "swf_celery.lifecycle",
    "list_workflow_runs": "swf_celery.lifecycle",
    "pause_workflow_run": "swf_celery.lifecycle",
    "resume_workflow_run": "swf_celery.lifecycle",
    "cancel_workflow_run": "swf_celery.lifecycle",
    "retry_failed_workflow": "swf_celery.lifecycle",
    "cancel_canvas": "swf_celery.lifecycle",
    "RunStatus": "swf_celery.lifecycle",
    "RunSummary": "swf_celery.lifecycle",
    # goals
    "Orchestrator": "swf_celery.goals",
    "WorkflowComposer": "swf_celery.goals",
    "GoalResult": "swf_celery.goals",
    "RuleDecomposer": "swf_celery.decomposers",
    "LLMDecomposer": "swf_celery.decomposers",
}

__all__ = ["SwfError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'swf_celery' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
