"""Procrastinate's client commands for ``bench_peers`` (its app: ``procrastinate_app``).

``python -m benchmarks.peers.procrastinate_side COMMAND [N [Q]]``: ``install`` applies the
schema, ``enqueue N Q`` defers N jobs one by one round-robin over Q queues
(``client.queue_names``), ``fill N`` defers them in batches, ``round-trips N Q`` defers one
job on a random one of Q queues and polls its status (``get_job_status_async``, the
documented way to learn a job's outcome: Procrastinate keeps no results) every 1 ms until
it has succeeded, N times; ``probe N`` times N fetches of one job with its finish (what the
worker does for each job, ``JobManager.fetch_job`` and ``finish_job``) and N defers.
"""

from __future__ import annotations

import asyncio

import procrastinate
from procrastinate.jobs import Status

from benchmarks.peers import client
from benchmarks.peers.procrastinate_app import app, noop


async def install() -> None:
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
    client.report(version=procrastinate.__version__)


async def enqueue(count: int, queues: int = 1) -> None:
    async with app.open_async():
        await client.timed_enqueues(lambda queue: noop.configure(queue=queue).defer_async(),
                                    count, queues)


async def fill(count: int) -> None:
    async with app.open_async():
        await client.timed_fill(lambda n: noop.batch_defer_async(*({} for _ in range(n))),
                                count)


async def round_trips(count: int, queues: int = 1) -> None:
    async def one(queue: str) -> None:
        job_id = await noop.configure(queue=queue).defer_async()
        while await app.job_manager.get_job_status_async(job_id) != Status.SUCCEEDED:
            await asyncio.sleep(0.001)

    async with app.open_async():
        await client.round_trips(one, count, queues)


async def probe(count: int) -> None:
    manager = app.job_manager

    async with app.open_async():
        worker_id = await manager.register_worker()

        async def read() -> None:
            job = await manager.fetch_job(queues=[client.QUEUE], worker_id=worker_id)
            if job is not None:
                await manager.finish_job(job=job, status=Status.SUCCEEDED, delete_job=False)

        try:
            await client.probes(read, noop.defer_async, count)
        finally:
            await manager.unregister_worker(worker_id)


if __name__ == "__main__":
    client.main({"install": install, "enqueue": enqueue, "fill": fill,
                 "round-trips": round_trips, "probe": probe})
