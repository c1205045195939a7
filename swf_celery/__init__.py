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

__all__ = ["SwfError", "__version__"]
