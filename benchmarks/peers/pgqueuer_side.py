"""PgQueuer's side of ``bench_peers``: its worker and its client commands.

``python -m benchmarks.peers.pgqueuer_side COMMAND [N ...]``:

* ``worker B C Q``: ``pgqueuer.run`` (the supervisor ``pgq run`` drives, on uvloop as that
  CLI runs it: ``pgq run`` 1.6.0 fails here before starting, its log level reaching
  ``setup_fancy_logger`` as a string) with ``batch_size=B`` and ``max_concurrent_tasks=C``
  (0: no cap), over a ``PgQueuer`` on one asyncpg connection with an ``async`` no-op
  entrypoint for each of Q queues (``client.queue_names``: PgQueuer's entrypoint is the
  queue a job waits in), as its quick start has it. A finished job leaves the queue table
  and gets a row in ``pgqueuer_log``.
* ``install``: the schema; ``enqueue N Q``: N jobs one by one, round-robin over Q queues;
  ``fill N``: N in batches;
* ``round-trips N Q``: one job enqueued on a random one of Q queues, then awaited through
  PgQueuer's ``CompletionWatcher`` (LISTEN/NOTIFY on the queue table, then a status query
  on the log), N times;
* ``probe N``: N dequeues of one job with its log entry (what the worker does for each
  job, ``Queries.dequeue`` and ``Queries.log_jobs``) and N enqueues.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta

import asyncpg
import pgqueuer
import uvloop
from pgqueuer import PgQueuer, Queries
from pgqueuer.core.completion import CompletionWatcher
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.ports.repository import EntrypointExecutionParameter

from benchmarks.peers import client

#: The watcher's debounce: the time it waits after a NOTIFY before its status query. Its
#: default, 50 ms, would add up to 50 ms to every round trip.
DEBOUNCE = timedelta(milliseconds=1)


async def noop(job: Job) -> None:
    """Do nothing: the benchmark measures the queue."""


def manager_factory(queues: int) -> Callable[[], AbstractAsyncContextManager[PgQueuer]]:
    """The worker's factory (what ``pgq run`` would be given): a ``PgQueuer`` with the no-op
    entrypoint on each of ``queues`` queues, as its quick start defines one."""

    @asynccontextmanager
    async def create_manager() -> AsyncIterator[PgQueuer]:
        connection = await asyncpg.connect(client.dsn())
        manager = PgQueuer(AsyncpgDriver(connection))
        for name in client.queue_names(queues):
            manager.entrypoint(name)(noop)
        try:
            yield manager
        finally:
            await connection.close()

    return create_manager


async def worker(batch_size: int, max_concurrent_tasks: int, queues: int = 1) -> None:
    await pgqueuer.run(manager_factory(queues), batch_size=batch_size,
                       max_concurrent_tasks=max_concurrent_tasks or None)


async def _queries() -> Queries:
    return Queries(AsyncpgDriver(await asyncpg.connect(client.dsn())))


async def install() -> None:
    await (await _queries()).install()
    client.report(version=pgqueuer.__version__)


async def enqueue(count: int, queues: int = 1) -> None:
    queries = await _queries()
    await client.timed_enqueues(lambda queue: queries.enqueue(queue, None), count, queues)


async def fill(count: int) -> None:
    queries = await _queries()
    await client.timed_fill(
        lambda n: queries.enqueue([client.QUEUE] * n, [None] * n, [0] * n), count)


async def round_trips(count: int, queues: int = 1) -> None:
    queries = await _queries()
    async with CompletionWatcher(queries.driver, queries=queries, debounce=DEBOUNCE) as watcher:
        async def one(queue: str) -> None:
            (job_id,) = await queries.enqueue(queue, None)
            await watcher.wait_for(job_id)

        await client.round_trips(one, count, queues)


async def probe(count: int) -> None:
    queries = await _queries()
    entrypoints = {client.QUEUE: EntrypointExecutionParameter(concurrency_limit=0)}
    manager_id = uuid.uuid4()

    async def read() -> None:
        jobs = await queries.dequeue(batch_size=1, entrypoints=entrypoints,
                                     queue_manager_id=manager_id,
                                     global_concurrency_limit=None,
                                     heartbeat_timeout=timedelta(seconds=30))
        if jobs:
            await queries.log_jobs([(job, "successful", None) for job in jobs])

    await client.probes(read, lambda: queries.enqueue(client.QUEUE, None), count)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["worker"]:  # on uvloop, as `pgq run` runs it
        uvloop.run(worker(*(int(a) for a in sys.argv[2:])))
    else:
        client.main({"install": install, "enqueue": enqueue, "fill": fill,
                     "round-trips": round_trips, "probe": probe})
