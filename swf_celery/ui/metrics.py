"""``/metrics`` in the Prometheus text format, read from the database at each scrape.

Families (all prefixed ``swf_``):

- ``swf_queue_depth{queue}``, ``swf_queue_ready{queue}``, ``swf_queue_delayed{queue}``,
  ``swf_queue_held{queue}``, ``swf_queue_oldest_age_seconds{queue}``,
  ``swf_queue_dead_letters{queue}`` (gauges, from the broker's tables: exact up to
  :data:`~swf_celery.ui.queues.COUNT_LIMIT`, estimates or lower bounds beyond, see
  :mod:`swf_celery.ui.queues`), ``swf_queue_estimated{queue}`` (1 when any of them is);
- ``swf_runs{workflow,status}`` (gauge: stored runs by status);
- ``swf_step_duration_seconds{step,queue}`` (histogram of finished attempts, every stored
  attempt; a step's duration is from start to end of its latest attempt);
- ``swf_step_failures_total{step,queue}`` (failed attempts, retried or final: the engine's
  error count);
- ``swf_console_events_total``, ``swf_console_event_reconnects_total``,
  ``swf_console_scrape_errors_total`` (this console process).

Each scrape runs a handful of aggregate statements. The queue gauges read at most
:data:`~swf_celery.ui.queues.COUNT_LIMIT` rows per queue and count; the step histogram
reads every stored step attempt, so scrape every 15 s or more on large histories.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from swf_celery.db import Database, load_queries
from swf_celery.ui import queues

QUERIES = load_queries(__package__)
#: Upper bounds (seconds) of the step duration histogram.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class SwfCollector:
    """A prometheus_client collector reading queues, runs and steps at each scrape."""

    def __init__(self, db: Database, hub: Any = None) -> None:
        self.db = db
        self.hub = hub
        self.errors = 0

    def collect(self) -> Iterator[Metric]:
        """Every family of the module docstring (the console's own when the DB fails)."""
        try:
            yield from self._database_metrics()
        except Exception:  # one failed scrape is counted, not fatal
            self.errors += 1
        events = CounterMetricFamily("swf_console_events", "Workflow events received")
        events.add_metric([], getattr(self.hub, "received", 0))
        yield events
        reconnects = CounterMetricFamily("swf_console_event_reconnects",
                                         "Reconnects of the events LISTEN connection")
        reconnects.add_metric([], getattr(self.hub, "reconnects", 0))
        yield reconnects
        errors = CounterMetricFamily("swf_console_scrape_errors",
                                     "Scrapes that could not read the database")
        errors.add_metric([], self.errors)
        yield errors

    def _database_metrics(self) -> Iterator[Metric]:
        stats = queues.queue_stats(self.db)
        families = {
            "depth": GaugeMetricFamily("swf_queue_depth", "Messages waiting (ready or delayed)",
                                       labels=["queue"]),
            "ready": GaugeMetricFamily("swf_queue_ready", "Messages deliverable now",
                                       labels=["queue"]),
            "delayed": GaugeMetricFamily("swf_queue_delayed", "Messages waiting for an ETA",
                                         labels=["queue"]),
            "held": GaugeMetricFamily("swf_queue_held", "Messages held by consumers",
                                      labels=["queue"]),
            "oldest_age": GaugeMetricFamily("swf_queue_oldest_age_seconds",
                                            "Age of the oldest ready message",
                                            labels=["queue"]),
            "dead_letters": GaugeMetricFamily("swf_queue_dead_letters",
                                              "Dead-lettered messages", labels=["queue"]),
        }
        estimated = GaugeMetricFamily(
            "swf_queue_estimated",
            f"1 when a count of the queue is over {queues.COUNT_LIMIT}: an estimate or a "
            "lower bound", labels=["queue"])
        for q in stats:
            for key, family in families.items():
                value = q.depth if key == "depth" else getattr(q, key)
                family.add_metric([q.name], float(value or 0))
            estimated.add_metric([q.name], 1.0 if q.approximate else 0.0)
        yield from families.values()
        yield estimated

        with self.db.connection() as conn:
            runs = conn.execute(QUERIES["metric_runs_by_status"]).fetchall()
            durations = conn.execute(QUERIES["metric_step_durations"],
                                     {"bounds": list(DURATION_BUCKETS)}).fetchall()
            failures = conn.execute(QUERIES["metric_step_failures"]).fetchall()
        by_status = GaugeMetricFamily("swf_runs", "Stored workflow runs by status",
                                      labels=["workflow", "status"])
        for slug, status, count in runs:
            by_status.add_metric([slug, status], count)
        yield by_status

        histogram = HistogramMetricFamily("swf_step_duration_seconds",
                                          "Duration of finished step attempts",
                                          labels=["step", "queue"])
        series: dict[tuple[str, str], dict[str, Any]] = {}
        for step, queue, bound, under, total, total_sum in durations:
            entry = series.setdefault((step, queue), {"buckets": [], "count": total,
                                                      "sum": total_sum})
            entry["buckets"].append((_bound(bound), under))
        for (step, queue), entry in series.items():
            histogram.add_metric([step, queue], entry["buckets"] + [("+Inf", entry["count"])],
                                 sum_value=float(entry["sum"]))
        yield histogram

        failed = CounterMetricFamily("swf_step_failures", "Failed step attempts",
                                     labels=["step", "queue"])
        for step, queue, count in failures:
            failed.add_metric([step, queue], float(count))
        yield failed


def _bound(value: float) -> str:
    return repr(float(value))


def registry_for(collector: SwfCollector) -> CollectorRegistry:
    """A registry holding only ``collector`` (the process's default registry is untouched)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    return registry


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics."""
    registry = request.app.state.console.registry
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
