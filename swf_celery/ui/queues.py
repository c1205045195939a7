"""The broker's queues as the console shows them: depth, age, delayed, dead letters.

Reads the ``swf://`` transport's storage (``swf.queues`` and each queue's pgmq tables)
with the statements of ``queues.sql``; the pgmq names come from ``swf.queues`` and are
checked with :data:`swf_celery.transport.names.PGMQ_NAME` before they become identifiers.
Dead letters can be requeued (visible at once, delivery count reset) or purged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from swf_celery.db import Database, load_queries
from swf_celery.errors import QueueNameError
from swf_celery.transport.names import PGMQ_NAME

QUERIES = load_queries(__package__, "queues.sql")
#: Characters of a dead letter's body shown on the page.
BODY_CAP = 4096


@dataclass(frozen=True)
class QueueStats:
    """One queue: messages ready now, delayed (ETA/countdown), held by consumers, the age of
    the oldest ready message in seconds, and its dead letters."""

    name: str
    ready: int
    delayed: int
    held: int
    oldest_age: float | None
    dead_letters: int

    @property
    def depth(self) -> int:
        """Messages waiting (ready or delayed), as ``swf.queue_size`` counts them."""
        return self.ready + self.delayed


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message with the transport's reason."""

    msg_id: int
    deliveries: int
    archived_at: datetime | None
    reason: str
    task: str | None
    task_id: str | None
    body: str
    body_length: int


def _tables(pgmq_name: str) -> dict[str, sql.Composable]:
    if not PGMQ_NAME.match(pgmq_name):
        raise QueueNameError(f"unexpected pgmq queue name {pgmq_name!r} in swf.queues")
    return {"queue": sql.Identifier("pgmq", f"q_{pgmq_name}"),
            "archive": sql.Identifier("pgmq", f"a_{pgmq_name}")}


def queue_names(db: Database) -> dict[str, str]:
    """``{kombu name: pgmq name}`` of every queue the broker knows."""
    with db.connection() as conn:
        return dict(conn.execute(QUERIES["queue_names"]).fetchall())


def _pgmq_name(db: Database, name: str) -> str:
    found = queue_names(db).get(name)
    if found is None:
        raise QueueNameError(f"queue {name!r} does not exist")
    return found


def queue_stats(db: Database) -> list[QueueStats]:
    """Every queue's counts, in one statement (one SELECT per queue, UNION ALL)."""
    names = queue_names(db)
    if not names:
        return []
    ordered = list(names.items())
    parts = [sql.SQL(QUERIES["queue_stats"]).format(index=sql.Literal(i), **_tables(pgmq))
             for i, (_, pgmq) in enumerate(ordered)]
    with db.connection() as conn:
        rows = conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall()
    return sorted((QueueStats(ordered[i][0], ready, delayed, held, age, dead)
                   for i, ready, delayed, held, age, dead in rows), key=lambda q: q.name)


def dead_letters(db: Database, name: str, *, limit: int = 100) -> list[DeadLetter]:
    """The newest dead letters of queue ``name`` (bodies cut to :data:`BODY_CAP`)."""
    query = sql.SQL(QUERIES["dead_letters"]).format(**_tables(_pgmq_name(db, name)))
    with db.connection() as conn:
        rows = conn.execute(query, {"cap": BODY_CAP, "limit": limit}).fetchall()
    return [DeadLetter(*row) for row in rows]


def _move(db: Database, statement: str, name: str, ids: list[int] | None) -> int:
    query = sql.SQL(QUERIES[statement]).format(**_tables(_pgmq_name(db, name)))
    with db.connection() as conn:
        return len(conn.execute(query, {"ids": ids}).fetchall())


def requeue_dead_letters(db: Database, name: str, ids: list[int] | None = None) -> int:
    """Put dead letters (``ids``, or all) back into their queue; how many moved."""
    return _move(db, "requeue_dead_letters", name, ids)


def purge_dead_letters(db: Database, name: str, ids: list[int] | None = None) -> int:
    """Delete dead letters (``ids``, or all) of a queue for good; how many."""
    return _move(db, "purge_dead_letters", name, ids)


def pretty_body(body: str) -> str:
    """A dead letter's JSON indented for reading (left as it is when cut or not JSON)."""
    try:
        return json.dumps(json.loads(body), indent=2, sort_keys=True)
    except ValueError:
        return body
