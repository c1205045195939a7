"""The worker bootstep that runs retention cleanup (:mod:`swf_celery.ops.retention`).

``import swf_celery`` connects :func:`install` to Celery's ``celeryd_init`` signal, which a
``celery worker`` sends before it builds its blueprint; for an app whose database is
PostgreSQL through swf-celery (``swf://`` broker or result backend, or
``swf_database_url``) it adds :class:`RetentionStep` to ``app.steps["worker"]``, Celery's
documented way to extend a worker. The step's thread cleans up every
``swf_retention_interval`` seconds (3600; the first pass a minute after start, or sooner with
a shorter interval). Every worker runs it; the database lets one session clean up at a time
and the others skip that round. ``swf_retention = False`` turns it off.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import bootsteps
from celery.signals import celeryd_init

from swf_celery.errors import ConfigurationError, DatabasePermissionError, SwfError

if TYPE_CHECKING:
    from swf_celery.ops.retention import RetentionPolicy

# ``import swf_celery`` imports this module: the database layer (psycopg) and the cleanup
# code are imported only when a worker starts.

logger = logging.getLogger(__name__)
DEFAULT_INTERVAL = 3600.0
FIRST_PASS_DELAY = 60.0


class RetentionStep(bootsteps.StartStopStep):
    """Runs :func:`~swf_celery.ops.retention.cleanup` periodically in a daemon thread."""

    label = "swf retention"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        """Start the cleanup thread."""
        from swf_celery.db import database_url
        from swf_celery.ops.retention import RetentionPolicy

        app = parent.app
        interval = float(app.conf.get("swf_retention_interval", DEFAULT_INTERVAL))
        policy = RetentionPolicy.from_conf(app.conf)
        url = database_url(app=app).url
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(url, policy, interval),
                                        name="swf-retention", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        """Stop the cleanup thread (a batch in flight finishes: it is short)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self, url: str, policy: RetentionPolicy, interval: float) -> None:
        from swf_celery.ops.retention import cleanup

        wait = min(FIRST_PASS_DELAY, interval)
        while not self._stop.wait(wait):
            wait = interval
            try:
                report = cleanup(url, policy)
            except DatabasePermissionError as exc:
                # A least-privilege worker role (`swf-celery grant --worker`) may not delete
                # finished runs: cleanup is an operator's (`swf-celery cleanup`).
                logger.warning("swf retention: this worker's database role may not clean "
                               "up (%s); stopped. Run `swf-celery cleanup` as an operator "
                               "or set swf_retention = False", exc)
                return
            except SwfError as exc:  # the database may be restarting: next round
                logger.warning("swf retention: cleanup failed: %s", exc)
                continue
            if report.total:
                logger.info("swf retention: deleted %s", report.deleted)


def install(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    """``celeryd_init`` handler: add :class:`RetentionStep` to a swf-celery app's workers."""
    app = getattr(instance, "app", None)
    if app is None or not app.conf.get("swf_retention", True):
        return
    from swf_celery.db import database_url

    try:
        source = database_url(app=app).source
    except ConfigurationError:
        return
    if source.startswith("app.conf."):  # the app's own database, not an env fallback
        app.steps["worker"].add(RetentionStep)


def connect() -> None:
    """Connect :func:`install` to ``celeryd_init`` (idempotent)."""
    celeryd_init.connect(install, weak=False, dispatch_uid="swf-celery-retention")
