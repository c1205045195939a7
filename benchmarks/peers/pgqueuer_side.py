"""PgQueuer's side of ``bench_peers``: its worker and its client commands.

``python -m benchmarks.peers.pgqueuer_side COMMAND [N ...]``:

* ``worker B C``: ``pgqueuer.run`` (the supervisor ``pgq run`` drives, on uvloop as that
  CLI runs it: ``pgq run`` 1.6.0 fails here before starting, its log level reaching
  ``setup_fancy_logger`` as a string) with ``batch_size=B`` and ``max_concurrent_tasks=C``
  (0: no cap), over a ``PgQueuer`` on one asyncpg connection with one ``async`` no-op
  entrypoint, as its quick start has it. A finished job leaves the queue table and gets a
  row in ``pgqueuer_log``.
* ``install``: the schema; ``enqueue N``: N jobs one by one; ``fill N``: N in batches;
* ``round-trips N``: one job enqueued, then awaited through PgQueuer's
  ``CompletionWatcher`` (LISTEN/NOTIFY on the queue table, then a status query on the
  log), N times.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
import pgqueuer
import uvloop
from pgqueuer import PgQueuer, Queries
from pgqueuer.core.completion import CompletionWatcher
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job

from benchmarks.peers import client

#: The watcher's debounce: the time it waits after a NOTIFY before its status query. Its
#: default, 50 ms, would add up to 50 ms to every round trip.
DEBOUNCE = timedelta(milliseconds=1)


@asynccontextmanager
async def create_manager() -> AsyncIterator[PgQueuer]:
    """The worker, as PgQueuer's quick start defines one (the factory ``pgq run`` would be
    given)."""
    connection = await asyncpg.connect(client.dsn())
    manager = PgQueuer(AsyncpgDriver(connection))

    @manager.entrypoint("noop")
    async def noop(job: Job) -> None:
        """Do nothing: the benchmark measures the queue."""

    try:
        yield manager
    finally:
        await connection.close()


async def worker(batch_size: int, max_concurrent_tasks: int) -> None:
    await pgqueuer.run(create_manager, batch_size=batch_size,
                       max_concurrent_tasks=max_concurrent_tasks or None)


async def _queries() -> Queries:
    return Queries(AsyncpgDriver(await asyncpg.connect(client.dsn())))


async def install() -> None:
    await (await _queries()).install()
    client.report(version=pgqueuer.__version__)


async def enqueue(count: int) -> None:
    queries = await _queries()
    await client.timed_enqueues(lambda: queries.enqueue("noop", None), count)


async def fill(count: int) -> None:
    queries = await _queries()
    await client.timed_fill(lambda n: queries.enqueue(["noop"] * n, [None] * n, [0] * n),
                            count)


async def round_trips(count: int) -> None:
    queries = await _queries()
    async with CompletionWatcher(queries.driver, queries=queries, debounce=DEBOUNCE) as watcher:
        async def one() -> None:
            (job_id,) = await queries.enqueue("noop", None)
            await watcher.wait_for(job_id)

        await client.round_trips(one, count)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["worker"]:  # on uvloop, as `pgq run` runs it
        uvloop.run(worker(*(int(a) for a in sys.argv[2:])))
    else:
        client.main({"install": install, "enqueue": enqueue, "fill": fill,
                     "round-trips": round_trips})
