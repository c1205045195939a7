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
