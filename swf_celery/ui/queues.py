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
#: How the transport names a transient queue in ``swf.queues.pgmq_name``.
TRANSIENT_PREFIX = "t_"
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


def _is_transient(pgmq_name: str) -> bool:
    """A transient queue's rows live in shared tables (``t_`` names, see queues.sql)."""
    return pgmq_name.startswith(TRANSIENT_PREFIX)


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
    """Every queue's counts: durable queues in one statement (one SELECT per queue, UNION
    ALL), transient queues in one more."""
    names = queue_names(db)
    if not names:
        return []
    durable = [(name, pgmq) for name, pgmq in names.items() if not _is_transient(pgmq)]
    transient = [name for name, pgmq in names.items() if _is_transient(pgmq)]
    stats: list[QueueStats] = []
    with db.connection() as conn:
        if durable:
            parts = [sql.SQL(QUERIES["queue_stats"]).format(index=sql.Literal(i),
                                                            **_tables(pgmq))
                     for i, (_, pgmq) in enumerate(durable)]
            rows = conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall()
            stats += [QueueStats(durable[i][0], ready, delayed, held, age, dead)
                      for i, ready, delayed, held, age, dead in rows]
        if transient:
            rows = conn.execute(QUERIES["transient_stats"], {"names": transient}).fetchall()
            stats += [QueueStats(*row) for row in rows]
    return sorted(stats, key=lambda q: q.name)


def dead_letters(db: Database, name: str, *, limit: int = 100) -> list[DeadLetter]:
    """The newest dead letters of queue ``name`` (bodies cut to :data:`BODY_CAP`)."""
    params = {"cap": BODY_CAP, "limit": limit, "queue": name}
    pgmq = _pgmq_name(db, name)
    if _is_transient(pgmq):
        query: sql.Composed | str = QUERIES["transient_dead_letters"]
    else:
        query = sql.SQL(QUERIES["dead_letters"]).format(**_tables(pgmq))
    with db.connection() as conn:
        rows = conn.execute(query, params).fetchall()
    return [DeadLetter(*row) for row in rows]


def _move(db: Database, statement: str, name: str, ids: list[int] | None) -> int:
    pgmq = _pgmq_name(db, name)
    if _is_transient(pgmq):
        query: sql.Composed | str = QUERIES["transient_" + statement]
    else:
        query = sql.SQL(QUERIES[statement]).format(**_tables(pgmq))
    with db.connection() as conn:
        return len(conn.execute(query, {"ids": ids, "queue": name}).fetchall())


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
