"""Procrastinate's client commands for ``bench_peers`` (its app: ``procrastinate_app``).

``python -m benchmarks.peers.procrastinate_side COMMAND [N]``: ``install`` applies the
schema, ``enqueue N`` defers N jobs one by one, ``fill N`` defers them in batches,
``round-trips N`` defers one job and polls its status (``get_job_status_async``, the
documented way to learn a job's outcome: Procrastinate keeps no results) every 1 ms until
it has succeeded, N times.
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


async def enqueue(count: int) -> None:
    async with app.open_async():
        await client.timed_enqueues(noop.defer_async, count)


async def fill(count: int) -> None:
    async with app.open_async():
        await client.timed_fill(lambda n: noop.batch_defer_async(*({} for _ in range(n))),
                                count)


async def round_trips(count: int) -> None:
    async def one() -> None:
        job_id = await noop.defer_async()
        while await app.job_manager.get_job_status_async(job_id) != Status.SUCCEEDED:
            await asyncio.sleep(0.001)

    async with app.open_async():
        await client.round_trips(one, count)


if __name__ == "__main__":
    client.main({"install": install, "enqueue": enqueue, "fill": fill,
                 "round-trips": round_trips})
