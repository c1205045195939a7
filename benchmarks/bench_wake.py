"""The wake-up's cost per publish as ``max_connections`` grows.

A publish into a queue with a consumer asleep on it wakes that consumer, and first asks
whether the consumer's LISTEN session still runs (``swf._sleeper_alive``). A session of
this release holds its sleeper lock and is answered by the lock manager; a session of
release 23 or older holds none and is answered by the server's backend status, whose read
copies every backend's entry: it grows with ``max_connections``.

For each ``max_connections`` a private server (``tests.cluster.hosts.Server``, needs root)
is migrated; then rounds alternate between a sleeper that holds the lock and one that does
not, each of PUBLISHES ``swf.queue_send`` calls from one session with ``track_functions =
'all'``. Reported: the server's time in the wake-up (``swf._queue_wake_locked``, from
``pg_stat_user_functions``) and in the whole trigger (``swf._queue_wakeup``) per publish.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from benchmarks.stats import LoadProbe
from swf_celery import db
from swf_celery.ops import migrate
from tests.cluster.hosts import Server
from tests.helpers import kombu_message

MAX_CONNECTIONS = (100, 500, 2000)
ROUNDS = 6
PUBLISHES = 500
QUEUE = "wake_bench"
CHANNEL = "swfw_00000000000000ab"
QUERIES = db.load_queries("swf_celery.transport")
FUNCTIONS = ("_queue_wake_locked", "_queue_wakeup")


class _LocalServer(Server):
    """A private server on 127.0.0.1 only (no cluster bridge)."""

    def url(self, database: str = "swf", host: str = "127.0.0.1") -> str:
        return super().url(database, host)


def _function_times(admin: psycopg.Connection[Any]) -> dict[str, tuple[int, float]]:
    admin.execute("SELECT pg_stat_clear_snapshot()")
    rows = admin.execute("SELECT funcname, calls, total_time FROM pg_stat_user_functions "
                         "WHERE schemaname = 'swf' AND funcname = ANY(%s)",
                         [list(FUNCTIONS)]).fetchall()
    return {name: (calls, total) for name, calls, total in rows}


def _round(url: str, admin: psycopg.Connection[Any], locked: bool) -> dict[str, float]:
    """µs per publish in each of FUNCTIONS, one sleeper asleep (holding the lock or not)."""
    with psycopg.connect(url, autocommit=True) as sleeper:
        if locked:
            sleeper.execute(QUERIES["hold_sleeper"])
        sleeper.execute(f'LISTEN "{CHANNEL}"')
        admin.execute("SELECT swf.queue_sleep(ARRAY[%s], %s, %s)",
                      [QUEUE, CHANNEL, sleeper.info.backend_pid])
        before = _function_times(admin)
        with psycopg.connect(url, autocommit=True) as producer:
            producer.execute("SET synchronous_commit = off")
            producer.execute("SET track_functions = 'all'")
            message = Jsonb(kombu_message("wake"))
            for _ in range(PUBLISHES):
                producer.execute("SELECT swf.queue_send(%s, %s)", [QUEUE, message])
        time.sleep(1.2)  # the producer's function statistics reach the shared store
        after = _function_times(admin)
        admin.execute("SELECT swf.queue_purge(%s)", [QUEUE])
        admin.execute("DELETE FROM swf.queue_sleepers")
    out = {}
    for name in FUNCTIONS:
        calls = after.get(name, (0, 0.0))[0] - before.get(name, (0, 0.0))[0]
        total = after.get(name, (0, 0.0))[1] - before.get(name, (0, 0.0))[1]
        out[name] = total / calls * 1000 if calls else float("nan")
    return out


def _point(max_connections: int) -> dict[bool, list[dict[str, float]]]:
    server = _LocalServer(max_connections=max_connections,
                          settings=["listen_addresses=127.0.0.1"])
    try:
        server.start()
        url = server.url()
        migrate.migrate(url)
        rounds: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT swf.queue_ensure(%s)", [QUEUE])
            _round(url, admin, True)  # warm-up
            for n in range(ROUNDS):
                for locked in (True, False) if n % 2 else (False, True):
                    rounds[locked].append(_round(url, admin, locked))
        db.resolve(url).close()
        return rounds
    finally:
        server.stop()


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def run(database_url: str) -> str:
    """Measure every point; return the Markdown section (``database_url`` is not used)."""
    probe = LoadProbe()
    if os.geteuid() != 0:
        return ("## Wake-up cost vs max_connections (`bench_wake`)\n\n"
                "Not run: the private servers need root.\n")
    lines = [
        "## Wake-up cost vs max_connections (`bench_wake`)",
        "",
        "Command: `python -m benchmarks.run bench_wake` (part of `make bench`; needs root). "
        f"One consumer asleep on a queue; {PUBLISHES} `swf.queue_send` calls per round from "
        f"one session, {ROUNDS} rounds per kind, kinds alternating, on a private server per "
        "`max_connections`. *Lock*: the sleeper's LISTEN session holds its sleeper lock, as "
        "a worker of this release does; *status*: it holds none, as a worker of release 23 "
        "or older, and the liveness check reads the server's backend status. Server time "
        "per publish (µs, `track_functions`), median (range) of rounds.",
        "",
        probe.note(),
        "",
        "| max_connections | wake-up, lock | wake-up, status | trigger, lock "
        "| trigger, status | saved per publish |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for max_connections in MAX_CONNECTIONS:
        print(f"   max_connections={max_connections}", flush=True)
        rounds = _point(max_connections)
        wake = {k: [r["_queue_wake_locked"] for r in v] for k, v in rounds.items()}
        trigger = {k: [r["_queue_wakeup"] for r in v] for k, v in rounds.items()}
        saved = statistics.median(trigger[False]) - statistics.median(trigger[True])
        lines.append(f"| {max_connections} | {_cell(wake[True])} | {_cell(wake[False])} "
                     f"| {_cell(trigger[True])} | {_cell(trigger[False])} | {saved:.1f} |")
    return "\n".join(lines) + "\n"
