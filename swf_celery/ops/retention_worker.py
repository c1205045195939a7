"""The worker bootstep that runs retention cleanup (:mod:`swf_celery.ops.retention`).

``import swf_celery`` connects :func:`install` to Celery's ``celeryd_init`` signal, which a
``celery worker`` sends before it builds its blueprint; for an app whose database is
PostgreSQL through swf-celery (``swf://`` broker or result backend, or
``swf_database_url``) it adds :class:`RetentionStep` to ``app.steps["worker"]``, Celery's
documented way to extend a worker. ``swf_retention = False`` turns it off.

Cleaning up is an operator's. The step's thread first asks the database which part the
worker's role plays (``swf.caller_part``). An operator (a role granted ``--operator``, or the
schema's owner) cleans up every ``swf_retention_interval`` seconds (3600; the first pass a
minute after start, or sooner with a shorter interval); the database lets one session clean
up at a time and the others skip that round. Any other role logs one warning at start that
names the role, ``swf-celery cleanup`` (to schedule as an operator) and the setting that
silences it; it asks again every interval and starts cleaning up if the role becomes an
operator.
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
    # After the pool: its processes are forked before this thread touches the database (a
    # fork while a thread imports a module or holds a lock leaves the child stuck on it).
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        """Start the cleanup thread."""
        import psycopg_pool  # noqa: F401 - imported here, not in the thread (see requires)

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
        from swf_celery.ops.retention import cleanup, role_and_part

        warned = False
        cleaning = False
        wait = 0.0  # the role is checked at once: a warning belongs to the worker's start
        while not self._stop.wait(wait):
            wait = interval
            try:
                if not cleaning:
                    role, part = role_and_part(url)
                    if part != "operator":
                        if not warned:
                            warned = True
                            logger.warning("%s", not_an_operator(role, part))
                        continue
                    cleaning = True
                    if warned:
                        logger.warning("swf retention: role %r is an operator now; this worker "
                                       "cleans up every %g s", role, interval)
                    wait = min(FIRST_PASS_DELAY, interval)
                    continue
                report = cleanup(url, policy)
            except DatabasePermissionError as exc:  # the role lost its part: ask next round
                logger.warning("swf retention: cleanup refused: %s", exc)
                cleaning = False
                continue
            except SwfError as exc:  # the database may be restarting: next round
                logger.warning("swf retention: cleanup failed: %s", exc)
                continue
            if report.total:
                logger.info("swf retention: deleted %s", report.deleted)


def not_an_operator(role: str, part: str | None) -> str:
    """The warning of a worker whose role may not clean up: who it is and what to do."""
    plays = f"a {part}" if part else "granted no part"
    return (f"swf retention: this worker does not clean up: its database role {role!r} is "
            f"{plays}, and cleanup is an operator's. Run `swf-celery cleanup` as an operator "
            f"role on a schedule (cron or a systemd timer: docs/retention.md), or make this "
            f"role an operator (`swf-celery grant {role} --operator`). Set swf_retention = "
            f"False to silence this warning.")


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
