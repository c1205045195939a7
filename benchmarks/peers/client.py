"""What the peers' client scripts share: the command line, the start handshake, the timed
enqueue loop, the round trips and the one-line JSON report.

``python -m benchmarks.peers.<peer> COMMAND [NUMBER ...]`` with the database in
``PEERS_DSN``.
A command that is measured prints ``ready`` once connected and waits for a line on stdin
(the harness starts its CPU meter in between); every command ends by printing one JSON
object on a line of its own. Standard library only: the peers' environment runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: The queue every peer job goes to (``queue_names`` spreads them over more).
QUEUE = "peers"
#: Seconds the round trips may take in all; past it, with at least MIN_ROUND_TRIPS made,
#: the command reports those (as ``bench_scale`` does for Celery's brokers).
ROUND_TRIP_BUDGET = 30.0
MIN_ROUND_TRIPS = 5


def queue_names(count: int) -> list[str]:
    """The queues jobs are spread over when there are ``count`` (``QUEUE`` alone for 1)."""
    return [QUEUE] if count <= 1 else [f"{QUEUE}-{i}" for i in range(count)]

#: A command: a coroutine function of the command line's numbers.
Command = Callable[..., Awaitable[None]]


def dsn() -> str:
    """The ``postgresql://`` URL of the peer's database (no query string: asyncpg would
    take its parameters for server settings)."""
    return os.environ["PEERS_DSN"]


def report(**values: Any) -> None:
    """Print the command's result, one JSON line."""
    print(json.dumps(values), flush=True)


async def handshake() -> None:
    """Say ``ready`` and wait until the harness says go."""
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)


async def timed_enqueues(enqueue: Callable[[str], Awaitable[object]], count: int,
                         queues: int = 1) -> None:
    """After the handshake, enqueue ``count`` jobs one by one, each awaited, round-robin
    over ``queue_names(queues)``; report when the first was sent (epoch seconds), the
    seconds the loop took and this process's CPU."""
    names = queue_names(queues)
    await handshake()
    cpu, start, t0 = time.process_time(), time.time(), time.perf_counter()
    for i in range(count):
        await enqueue(names[i % len(names)])
    report(start=start, seconds=time.perf_counter() - t0, cpu=time.process_time() - cpu)


async def round_trips(one: Callable[[str], Awaitable[None]], count: int,
                      queues: int = 1) -> None:
    """Time up to ``count`` sequential calls of ``one`` (enqueue on a random one of
    ``queue_names(queues)``, then wait until done), within ROUND_TRIP_BUDGET."""
    names, rng = queue_names(queues), random.Random(7)
    await one(names[0])  # the first one opens what later ones reuse
    latencies: list[float] = []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        await one(rng.choice(names))
        latencies.append(time.perf_counter() - t0)
        if len(latencies) >= MIN_ROUND_TRIPS and time.perf_counter() - start > ROUND_TRIP_BUDGET:
            break
    report(latencies=latencies)


async def probes(read: Callable[[], Awaitable[object]], send: Callable[[], Awaitable[object]],
                 count: int) -> None:
    """Time ``count`` reads (a worker's fetch of one job and its finish) and ``count`` sends
    (one enqueue), alternately, on the queue as it is; report both lists of seconds."""
    reads, sends = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        await read()
        reads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await send()
        sends.append(time.perf_counter() - t0)
    report(reads=reads, sends=sends)


async def timed_fill(fill: Callable[[int], Awaitable[None]], count: int) -> None:
    """Enqueue ``count`` jobs in batches of 1,000 through ``fill(n)``; report the seconds."""
    t0 = time.perf_counter()
    for first in range(0, count, 1000):
        await fill(min(1000, count - first))
    report(seconds=time.perf_counter() - t0)


def main(commands: dict[str, Command]) -> None:
    """Run the command named on the command line with its numbers."""
    asyncio.run(commands[sys.argv[1]](*(int(a) for a in sys.argv[2:])))
