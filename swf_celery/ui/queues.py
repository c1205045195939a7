"""The broker's queues as the console shows them: depth, age, delayed, dead letters.

Reads the ``swf://`` transport's storage (``swf.queues``, each durable queue's pgmq table,
the shared table of transient queues, ``swf.dead_letters``) with the statements of
``queues.sql``; the pgmq names come from ``swf.queues`` and are checked with
:data:`swf_celery.transport.names.PGMQ_NAME` before they become identifiers. Dead letters
can be requeued (visible at once, delivery count reset) or purged.
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


def _table(pgmq_name: str) -> sql.Composable:
    if not PGMQ_NAME.match(pgmq_name):
        raise QueueNameError(f"unexpected pgmq queue name {pgmq_name!r} in swf.queues")
    return sql.Identifier("pgmq", f"q_{pgmq_name}")


def queue_names(db: Database) -> dict[str, str]:
    """``{kombu name: pgmq name}`` of every queue the broker knows."""
    return {name: pgmq for name, pgmq, _ in _queues(db)}


def _queues(db: Database) -> list[tuple[str, str, str]]:
    with db.connection() as conn:
        return conn.execute(QUERIES["queue_names"]).fetchall()


def queue_stats(db: Database) -> list[QueueStats]:
    """Every queue's counts: durable queues in one statement (one SELECT per queue, UNION
    ALL), transient queues in one more, dead letters in a third."""
    queues = _queues(db)
    if not queues:
        return []
    durable = [(name, pgmq) for name, pgmq, storage in queues if storage == "pgmq"]
    transient = [name for name, _, storage in queues if storage == "transient"]
    counts: list[tuple[str, int, int, int, float | None]] = []
    with db.connection() as conn:
        if durable:
            parts = [sql.SQL(QUERIES["queue_stats"]).format(index=sql.Literal(i),
                                                            queue=_table(pgmq))
                     for i, (_, pgmq) in enumerate(durable)]
            rows = conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall()
            counts += [(durable[i][0], *rest) for i, *rest in rows]
        if transient:
            counts += conn.execute(QUERIES["transient_stats"], {"names": transient}).fetchall()
        dead = dict(conn.execute(QUERIES["dead_letter_counts"],
                                 {"names": [name for name, _, _ in queues]}).fetchall())
    return sorted((QueueStats(name, ready, delayed, held, age, dead.get(name, 0))
                   for name, ready, delayed, held, age in counts), key=lambda q: q.name)


def dead_letters(db: Database, name: str, *, limit: int = 100) -> list[DeadLetter]:
    """The newest dead letters of queue ``name`` (bodies cut to :data:`BODY_CAP`)."""
    _require(db, name)
    with db.connection() as conn:
        rows = conn.execute(QUERIES["dead_letters"],
                            {"cap": BODY_CAP, "limit": limit, "queue": name}).fetchall()
    return [DeadLetter(*row) for row in rows]


def _require(db: Database, name: str) -> None:
    if name not in queue_names(db):
        raise QueueNameError(f"queue {name!r} does not exist")


def _move(db: Database, statement: str, name: str, ids: list[int] | None) -> int:
    _require(db, name)
    with db.connection() as conn:
        return int(conn.execute(QUERIES[statement],  # type: ignore[index]
                                {"ids": ids, "queue": name}).fetchone()[0])


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
