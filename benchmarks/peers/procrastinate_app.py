"""Procrastinate's app for ``bench_peers``: what its worker runs and its client defers.

Worker: ``python -m procrastinate --app benchmarks.peers.procrastinate_app.app worker
--queues peers --concurrency N`` (its documented CLI). The job is an ``async`` no-op, the
shape Procrastinate's docs recommend with concurrency above 1; jobs stay in the table
(``delete_jobs`` at its default, ``never``) with their final status.
"""

from __future__ import annotations

import procrastinate

from benchmarks.peers import client

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=client.dsn()))


@app.task(name="noop", queue=client.QUEUE)
async def noop() -> None:
    """Do nothing: the benchmark measures the queue."""
