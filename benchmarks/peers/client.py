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
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: The queue every peer job goes to.
QUEUE = "peers"

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


async def timed_enqueues(enqueue: Callable[[], Awaitable[object]], count: int) -> None:
    """After the handshake, enqueue ``count`` jobs one by one, each awaited; report when the
    first was sent (epoch seconds), the seconds the loop took and this process's CPU."""
    await handshake()
    cpu, start, t0 = time.process_time(), time.time(), time.perf_counter()
    for _ in range(count):
        await enqueue()
    report(start=start, seconds=time.perf_counter() - t0, cpu=time.process_time() - cpu)


async def round_trips(one: Callable[[], Awaitable[None]], count: int) -> None:
    """Time ``count`` sequential calls of ``one`` (enqueue, then wait until done)."""
    await one()  # the first one opens what later ones reuse
    latencies = []
    for _ in range(count):
        t0 = time.perf_counter()
        await one()
        latencies.append(time.perf_counter() - t0)
    report(latencies=latencies)


async def timed_fill(fill: Callable[[int], Awaitable[None]], count: int) -> None:
    """Enqueue ``count`` jobs in batches of 1,000 through ``fill(n)``; report the seconds."""
    t0 = time.perf_counter()
    for first in range(0, count, 1000):
        await fill(min(1000, count - first))
    report(seconds=time.perf_counter() - t0)


def main(commands: dict[str, Command]) -> None:
    """Run the command named on the command line with its numbers."""
    asyncio.run(commands[sys.argv[1]](*(int(a) for a in sys.argv[2:])))
