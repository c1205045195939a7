"""The console as an ASGI app: :func:`create_app` (serve it, or mount it in your own app).

Routes (all under the mount point):

=====================================  ==============================================
``GET /``                              runs: filters, paging, counts by status (live)
``GET /runs/{id}`` (``?step=NAME``)    a run: DAG, steps, attempts, a step's data
``POST /runs/{id}/{action}``           pause, resume, cancel (``reason``), retry
``GET /runs/{id}/events``, ``/events`` Server-Sent Events (one run / all runs)
``GET /queues``, ``/queues/{name}``    queues; a queue's dead letters
``POST /queues/{name}/dead-letters/…`` ``requeue`` or ``purge`` (``ids``, or all)
``GET /flows``, ``/flows/{slug}``      stored flows (``POST …/delete``)
``GET /goals``, ``/goals/{id}``        goal task graphs (``POST …/approve``)
``GET /keys``                          flow keys: limits, held keys (``POST …/release``)
``GET /schedules``                     the beat schedule (``POST …/{name}/pause|resume``)
``GET /health``                        the doctor's report (``swf-celery doctor``)
``GET /metrics``                       Prometheus text format
``GET /static/…``                      the stylesheet and script (no CDN)
=====================================  ==============================================
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from swf_celery.db import Database, DatabaseHandle, read_only_url, resolve
from swf_celery.errors import ConfigurationError
from swf_celery.ui import (
    catalog,
    controls,
    health,
    keys,
    metrics,
    queue_pages,
    run,
    runs,
    schedule_pages,
)
from swf_celery.ui.events import EventHub
from swf_celery.ui.layout import Context
from swf_celery.ui.security import TOKEN_ENV, Csrf, Guard, allowed_host_names


@dataclass
class Console:
    """The state the pages share (``request.app.state.console``)."""

    db: Database
    read_only: bool
    celery_app: Any
    hub: EventHub
    csrf: Csrf = field(default_factory=Csrf)
    consumers: queue_pages.Consumers = field(init=False)
    registry: Any = field(init=False)

    def __post_init__(self) -> None:
        # Counting consumers broadcasts ``inspect active_queues`` (a publish, and a reply
        # queue declared): a read-only console does not ask.
        self.consumers = queue_pages.Consumers(None if self.read_only else self.celery_app)
        self.registry = metrics.registry_for(metrics.SwfCollector(self.db, self.hub))

    def context(self, request: Request) -> Context:
        """The page context of one request."""
        return Context(request, self.csrf, self.read_only)


def create_app(repo: DatabaseHandle | None = None, *,
               allowed_hosts: Sequence[str] | None = None, token: str | None = None,
               require_token: bool = True, read_only: bool = False,
               celery_app: Any = None) -> Starlette:
    """The console on ``repo`` (a DSN, Engine or pool; ``None``: ``$SWF_DATABASE_URL``...).

    It has the guard ``swf-celery ui`` has, and refuses to start without it
    (:class:`ConfigurationError` naming what is missing):

    - ``allowed_hosts`` (required): the Host names browsers reach the console under; a
      request naming another host gets 400, so a page whose DNS name was rebound to the
      console's address can neither read nor drive it. ``LOOPBACK_HOSTS`` for a console on
      this machine; ``"*"``, any name, only with a token.
    - ``token``: required on every request (default ``$SWF_UI_TOKEN``; ``""`` is none);
      ``require_token=False`` lets it serve without one, for where the app that mounts it
      authenticates every request or listens on loopback only.

    ``read_only`` hides and refuses every control, asks no worker anything, and reads
    through sessions of its own that cannot write (``default_transaction_read_only``).
    ``celery_app``: used to count consumers (``inspect active_queues``) and to revoke
    running steps on cancel; without one the consumers column stays empty and cancel uses
    an app on the database's ``swf://`` URL. Mount it in your own Starlette/FastAPI app
    with ``Mount("/swf", app=create_app(...))``.
    """
    if token is None:
        token = os.environ.get(TOKEN_ENV)
    token = token or None
    hosts = allowed_host_names(allowed_hosts, token)
    if token is None and require_token:
        raise ConfigurationError(
            f"the console has no token: pass token=... or set {TOKEN_ENV} (a long random "
            "string); require_token=False serves it without one, only where the app that "
            "mounts it authenticates every request or listens on loopback only")
    db = resolve(repo)
    if read_only:
        db = resolve(read_only_url(db.dsn))
    hub = EventHub(db.dsn)
    console = Console(db, read_only, celery_app, hub)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await hub.close()

    routes = [
        Route("/", runs.runs_page),
        Route("/events", controls.all_events),
        Route("/runs/{run_id}", run.run_page),
        Route("/runs/{run_id}/events", controls.run_events),
        Route("/runs/{run_id}/{action}", controls.control, methods=["POST"]),
        Route("/queues", queue_pages.queues_page),
        Route("/queues/{name:path}/dead-letters/{action}", queue_pages.dead_letter_action,
              methods=["POST"]),
        Route("/queues/{name:path}", queue_pages.queue_page),
        Route("/flows", catalog.flows_page),
        Route("/flows/{slug:path}/delete", catalog.flow_delete, methods=["POST"]),
        Route("/flows/{slug:path}", catalog.flow_page),
        Route("/goals", catalog.goals_page),
        Route("/goals/{graph_id}/approve", catalog.goal_approve, methods=["POST"]),
        Route("/goals/{graph_id}", catalog.goal_page),
        Route("/keys", keys.keys_page),
        Route("/keys/{key:path}/release", keys.key_release, methods=["POST"]),
        Route("/schedules", schedule_pages.schedules_page),
        Route("/schedules/{name:path}/{action}", schedule_pages.schedule_action,
              methods=["POST"]),
        Route("/health", health.health_page),
        Route("/metrics", metrics.metrics_endpoint),
        Mount("/static", app=StaticFiles(packages=[("swf_celery.ui", "static")]),
              name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(Guard, token=token, allowed_hosts=hosts)])
    app.state.console = console
    return app
