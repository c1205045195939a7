"""swf-celery: PostgreSQL-backed DAG workflows for Celery.

Importing the package registers the ``swf://`` kombu transport alias, so a Celery app
that does ``import swf_celery`` can use ``broker_url="swf://user@host/db"``. The
workflow API is imported lazily (``swf_celery.Executor`` etc.) so that the transport
and result backend load without the workflow layer.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES

from swf_celery.errors import SwfError

# kombu has no entry point for transports: registering the alias on import is the
# documented way (kombu.transport.TRANSPORT_ALIASES). kombu's own "pgmq" alias is untouched.
TRANSPORT_ALIASES["swf"] = "swf_celery.transport:Transport"

__version__ = "0.1.0"

# Public name -> module that defines it; imported on first access (PEP 562), so that
# `import swf_celery` (which the broker transport needs) stays cheap.
_LAZY = {
    "step": "swf_celery.definition",
    "Step": "swf_celery.definition",
    "WorkflowDef": "swf_celery.definition",
    "Executor": "swf_celery.executor",
    "RunResult": "swf_celery.executor",
    "FlowBuilder": "swf_celery.flows",
    "get_run_status": "swf_celery.lifecycle",
    "list_workflow_runs": "swf_celery.lifecycle",
    "pause_workflow_run": "swf_celery.lifecycle",
    "resume_workflow_run": "swf_celery.lifecycle",
    "cancel_workflow_run": "swf_celery.lifecycle",
    "retry_failed_workflow": "swf_celery.lifecycle",
    "RunStatus": "swf_celery.lifecycle",
    "RunSummary": "swf_celery.lifecycle",
    "WorkflowFailed": "swf_celery.errors",
    "WorkflowTimeout": "swf_celery.errors",
    "WorkflowDefinitionError": "swf_celery.errors",
}

__all__ = ["SwfError", "__version__", *_LAZY]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'swf_celery' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
