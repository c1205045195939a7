"""Move queued Celery messages from a Redis broker into the swf broker.

For teams switching ``broker_url`` from ``redis://`` to ``swf://``. The safe procedure
(also in ``examples/from_redis/README.md``):

1. Stop the producers, then stop the Redis workers with a warm shutdown (``TERM``):
   kombu puts their unacknowledged and ETA-held messages back on the Redis lists.
2. ``swf-celery drain-redis redis://host:6379/0 celery gpu_workers …``
3. Start the workers and producers on ``swf://``.

Each message is moved with ``RPOPLPUSH`` onto a backup list ``<queue>.swf-draining``,
written to Postgres (``swf.queue_send``, committed), and only then removed from the
backup. A crash in between leaves the message in the backup list, and the next run
moves the backup first: nothing is lost; a message may be delivered twice (the same
at-least-once promise Celery makes). Priority sub-queues (``queue\\x06\\x16N``) are
drained too, keeping each message's priority property; every sub-queue 1-9 is looked at,
so custom ``priority_steps`` are covered.

Not moved: messages a Redis worker holds unacknowledged (kombu keeps them in the hash
``unacked`` until the worker acks them or a warm shutdown puts them back on the list).
:func:`held_by_workers` counts them, and ``drain-redis`` warns when there are any. A
``global_keyprefix`` transport option is not supported: pass the prefixed queue name.
"""

from __future__ import annotations

import json
from typing import Any

from swf_celery.db import DatabaseHandle, load_queries, resolve
from swf_celery.errors import ConfigurationError, MessageError

QUERIES = load_queries(__package__, "redis_drain.sql")
PRIORITY_SEP = "\x06\x16"
#: kombu's default steps are 0, 3, 6, 9; any 0-9 is possible with ``priority_steps``.
PRIORITY_STEPS = tuple(range(10))
#: kombu's default ``unacked_key``.
UNACKED_KEY = "unacked"


def _redis(url: str) -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigurationError("draining Redis needs the redis package: pip install redis") \
            from None
    return redis.Redis.from_url(url)


def held_by_workers(redis_url: str, queues: list[str] | tuple[str, ...], *,
                    unacked_key: str = UNACKED_KEY) -> int:
    """How many messages of ``queues`` Redis workers hold unacknowledged (not drainable)."""
    client = _redis(redis_url)
    wanted = set(queues)
    held = 0
    for _tag, raw in client.hscan_iter(unacked_key):
        try:
            _message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError, UnicodeDecodeError):
            continue
        if routing_key in wanted:
            held += 1
    return held


def drain_queue(redis_url: str, queue: str, repo: DatabaseHandle | None = None) -> int:
    """Move every message of Redis queue ``queue`` into the swf queue of the same name."""
    client = _redis(redis_url)
    db = resolve(repo)
    moved = 0
    for step in PRIORITY_STEPS:
        key = queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}"
        backup = f"{key}.swf-draining"
        while True:
            raw = client.lindex(backup, -1)  # leftovers of an interrupted run go first
            if raw is None:
                raw = client.rpoplpush(key, backup)
            if raw is None:
                break
            try:
                message = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise MessageError(
                    f"message in Redis list {key!r} is not JSON ({exc}); it stays in "
                    f"{backup!r} for inspection"
                ) from exc
            with db.connection() as conn:
                conn.execute(QUERIES["queue_send"], {"queue": queue,
                                                "message": json.dumps(message)})
            client.rpop(backup)
            moved += 1
    return moved
