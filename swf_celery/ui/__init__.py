"""The web console: runs, the DAG drawn live, controls, queues and dead letters, metrics.

``swf-celery ui`` serves it (``celery -A app swf ui`` with the app's settings);
:func:`create_app` returns the ASGI app to mount in your own. Needs the ``web`` extra
(``pip install 'swf-celery[web]'``: Starlette, uvicorn, prometheus_client). Pages are
server-rendered HTML, readable without JavaScript; the package's own script adds live
updates over Server-Sent Events. See ``docs/console.md``.
"""

from swf_celery.ui.app import create_app
from swf_celery.ui.security import LOOPBACK_HOSTS

__all__ = ["LOOPBACK_HOSTS", "create_app"]
