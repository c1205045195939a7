"""Procrastinate and PgQueuer on ``bench_scale``'s queue-count and backlog curves, beside
Celery's brokers: the same database server, their simplest no-op job (``bench_peers``),
driven by ``bench_peers``' harness (their own environment, ``.venv-peers``).

* **queues**: one worker process (concurrency 2) consumes N queues (Procrastinate's
  ``--queues``; PgQueuer's entrypoints, its queues); the client enqueues ``TASKS`` jobs
  round-robin over them, then makes round trips on random ones. "broker CPU" is the
  worker process plus PostgreSQL (the peers run their jobs in that process: there are no
  pool children), the client's CPU is its own process's.
* **backlog**: B jobs enqueued with each peer's batch API and no worker; then
  ``PROBES`` reads (the worker's fetch of one job and its finish, the peer's own calls)
  and enqueues timed from a client, and a worker's drain rate.

A point that fails raises; ``bench_scale`` reports it with its reason, as any of its points.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks import bench_peers, bench_scale
from benchmarks.bench_peers import Peer
from benchmarks.cpu import CpuMeter
from benchmarks.stats import percentile
from tests.helpers import sql_value

#: The peers on the curves, by their name in bench_peers.
PEERS = (bench_peers.PROCRASTINATE, bench_peers.PGQUEUER)


@contextmanager
def _installed(name: str, database_url: str, point: str) -> Iterator[tuple[Peer, str]]:
    """Peer ``name`` and the URL of a scratch database with its schema installed (named
    after the peer and ``point``); PointFailed when its environment cannot be had."""
    if (reason := bench_peers.peers_environment()) is not None:
        raise bench_peers.PointFailed(reason)
    peer = bench_peers.PEERS[name]
    label = name.split(",")[0].split()[0].lower()
    with bench_scale.scratch_database(database_url, f"{label}{point}", migrated=False) as url:
        bench_peers.install(peer, url, {})
        yield peer, url


def queues_point(name: str, database_url: str, count: int) -> dict[str, Any]:
    """Peer ``name`` with one worker on ``count`` queues (``bench_scale``'s queues point)."""
    with _installed(name, database_url, str(count)) as (peer, url):
        started = time.perf_counter()
        with bench_peers.peer_workers(peer, url, [2], queues=count) as workers:
            bench_peers.peer_run(peer, url, "enqueue", "20", str(count), stdin="go\n")
            bench_peers.until_finished(peer, url, workers, timeout=600)  # warm-up
            ready = time.perf_counter() - started
            time.sleep(5.0)
            idle = CpuMeter(workers.pids, bench_scale.POSTMASTER)
            time.sleep(5.0)
            idle_cpu = {role: s / 5.0 * 1000 for role, s in idle.stop().items()}
            report, meter = bench_peers.metered_enqueue(peer, url, workers.pids, queues=count)
            end = bench_peers.until_finished(peer, url, workers,
                                             timeout=bench_scale.BATCH_BUDGET)
            cpu = {role: s / bench_scale.TASKS * 1000 for role, s in meter.stop().items()}
            cpu["client"] = report["cpu"] / bench_scale.TASKS * 1000
            latencies = bench_peers.peer_run(
                peer, url, "round-trips", str(bench_scale.ROUND_TRIPS), str(count),
                timeout=bench_scale.ROUND_TRIP_BUDGET + 60)["latencies"]
    for roles in (cpu, idle_cpu):  # servers the peers do not use (other work's)
        for role in ("redis-server", "RabbitMQ"):
            roles.pop(role, None)
    idle_cpu.pop("client", None)  # the harness, not the peer
    return {"ready": ready, "throughput": bench_scale.TASKS / (end - report["start"]),
            "cpu": cpu, "idle": idle_cpu, "p50": percentile(latencies, 50) * 1000,
            "p95": percentile(latencies, 95) * 1000, "round_trips": len(latencies)}


def backlog_point(name: str, database_url: str, backlog: int) -> dict[str, Any]:
    """Peer ``name`` with ``backlog`` jobs waiting (``bench_scale``'s backlog point)."""
    with _installed(name, database_url, f"b{backlog}") as (peer, url):
        fill = bench_peers.peer_run(peer, url, "fill", str(backlog), timeout=1800)["seconds"]
        probes = bench_peers.peer_run(peer, url, "probe", str(bench_scale.PROBES))
        drain = float("nan")
        if backlog > 1:
            drain = bench_scale.drain_rate(lambda: int(sql_value(url, peer.waiting)),
                                           bench_peers.peer_workers(peer, url, [2]))
    return bench_scale.backlog_result(fill, probes["reads"], probes["sends"], drain)
