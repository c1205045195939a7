"""The worker bootstep that fails timed-out step attempts on a clock.

An attempt whose worker died past its hard time limit never reports, and its message is
acknowledged; without a sweep its run would wait forever. Every worker started with an
app whose database is configured (``swf_database_url``, or a ``swf://`` broker or result
backend) runs :class:`TimeoutSweeper`: a thread in the worker's main process that calls
``swf.sweep_timeouts()`` every ``swf_sweep_interval`` seconds (default 30). That function
takes a transaction-level advisory lock (``pg_try_advisory_xact_lock``, so it works through
PgBouncer in transaction mode): one sweeper works at a time, the others skip. The
attempts of runs a sweep failed that are still running are revoked with ``terminate``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from swf_celery import db
from swf_celery.workflows import coordinator

log = logging.getLogger("swf_celery.workflows.sweeper")

#: Celery setting: seconds between two sweeps of one worker.
INTERVAL_SETTING = "swf_sweep_interval"
DEFAULT_INTERVAL = 30.0


def configured_database(app: Any) -> str | None:
    """The app's own workflow database URL, or ``None`` (then there is nothing to sweep)."""
    try:
        found = db.database_url(app=app)
    except Exception:  # noqa: BLE001 - no database configured
        return None
    return found.url if found.source.startswith("app.conf.") else None


class TimeoutSweeper(bootsteps.StartStopStep):
    """Sweep timed-out attempts every ``swf_sweep_interval`` seconds (see the module)."""

    label = "swf timeout sweeper"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        url = configured_database(worker.app)
        if url is None:
            return
        interval = float(worker.app.conf.get(INTERVAL_SETTING) or DEFAULT_INTERVAL)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(worker.app, url, interval),
                                        name="swf-timeout-sweeper", daemon=True)
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _loop(self, app: Any, url: str, interval: float) -> None:
        while not self._stop.wait(interval):
            sweep(app, url)


def sweep(app: Any, url: str) -> int:
    """One sweep: fail overdue attempts, revoke what still runs of the runs that failed."""
    try:
        result = coordinator.sweep_timeouts(db.resolve(url))
    except Exception as exc:  # noqa: BLE001 - the next tick tries again
        log.warning("swf timeout sweep failed: %s", exc)
        return 0
    if not result:
        return 0  # another worker holds the sweep lock
    if result["revoke"]:
        try:
            app.control.revoke(result["revoke"], terminate=True)
        except Exception as exc:  # noqa: BLE001 - best effort
            log.warning("swf timeout sweep: could not revoke %s: %s", result["revoke"], exc)
    return int(result["expired"])
