"""The broker's queues as the console shows them: depth, age, delayed, dead letters.

Reads the ``swf://`` transport's storage (``swf.queues``, each durable queue's pgmq table,
the shared table of transient queues, ``swf.dead_letters``) with the statements of
``queues.sql``; the pgmq names come from ``swf.queues`` and are checked with
:data:`swf_celery.transport.names.PGMQ_NAME` before they become identifiers. Dead letters
can be requeued (visible at once, delivery count reset) or purged.

A reading costs the same however long the queues are: each count reads at most
:data:`COUNT_LIMIT` rows of a queue through an index. Counts up to the limit are exact;
beyond it a durable queue's are estimates from PostgreSQL's statistics of its table
(``pg_stat_all_tables.n_live_tup``, else ``pg_class.reltuples``), and the others are lower
bounds; :attr:`QueueStats.approximate` says which.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from psycopg import sql

from swf_celery.db import Database, load_queries
from swf_celery.errors import QueueNameError
from swf_celery.transport.names import PGMQ_NAME

QUERIES = load_queries(__package__, "queues.sql")
#: Characters of a dead letter's body shown on the page.
BODY_CAP = 4096
#: Rows one count reads at most, per queue (ready; delayed and held; dead letters).
COUNT_LIMIT = 10_000
#: Marks of :attr:`QueueStats.approximate`.
ESTIMATE, AT_LEAST = "\u2248", "\u2265"


@dataclass(frozen=True)
class QueueStats:
    """One queue: messages ready now, delayed (ETA/countdown), held by consumers, the age of
    the oldest ready message in seconds, and its dead letters.

    ``approximate`` maps the fields that are not exact counts to :data:`ESTIMATE` (from
    PostgreSQL's statistics) or :data:`AT_LEAST` (a lower bound).
    """

    name: str
    ready: int
    delayed: int
    held: int
    oldest_age: float | None
    dead_letters: int
    approximate: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def depth(self) -> int:
        """Messages waiting (ready or delayed), as ``swf.queue_size`` counts them."""
        return self.ready + self.delayed

    def mark(self, name: str) -> str:
        """``""`` for an exact field, else its :attr:`approximate` mark (``depth`` too)."""
        if name == "depth":
            marks = [self.approximate[f] for f in ("ready", "delayed") if f in self.approximate]
            return ESTIMATE if ESTIMATE in marks else (marks[0] if marks else "")
        return self.approximate.get(name, "")


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


def queue_stats(db: Database, names: Sequence[str] | None = None) -> list[QueueStats]:
    """Every queue's counts (or those of ``names``): durable queues in one statement (one
    SELECT per queue, UNION ALL), transient queues in one more, dead letters in a third,
    and the statistics of the durable queues whose counts reached :data:`COUNT_LIMIT`."""
    queues = [q for q in _queues(db) if names is None or q[0] in names]
    if not queues:
        return []
    durable = [(name, pgmq) for name, pgmq, storage in queues if storage == "pgmq"]
    transient = [name for name, _, storage in queues if storage == "transient"]
    limit = {"limit": COUNT_LIMIT}
    stats: list[QueueStats] = []
    with db.connection() as conn:
        dead = dict(conn.execute(QUERIES["dead_letter_counts"],
                                 {**limit, "names": [name for name, _, _ in queues]}))
        if durable:
            rows = conn.execute(durable_statement([pgmq for _, pgmq in durable]),
                                limit).fetchall()
            capped = [durable[row[0]][1] for row in rows
                      if row[1] >= COUNT_LIMIT or row[5] >= COUNT_LIMIT]
            live = dict(conn.execute(QUERIES["table_estimates"],
                                     {"tables": [f"q_{p}" for p in capped]})) if capped else {}
            for i, ready, delayed, held, age, later in rows:
                name, pgmq = durable[i]
                stats.append(_durable(name, ready, delayed, held, age, later,
                                      live.get(f"q_{pgmq}", 0), dead.get(name, 0)))
        if transient:
            for name, ready, delayed, held, age, read in conn.execute(
                    QUERIES["transient_stats"], {**limit, "names": transient}):
                marks = dict.fromkeys(("ready", "delayed", "held", "oldest_age"), AT_LEAST)
                stats.append(QueueStats(name, ready, delayed, held, age, dead.get(name, 0),
                                        _dead_mark(marks if read >= COUNT_LIMIT else {},
                                                   dead.get(name, 0))))
    return sorted(stats, key=lambda q: q.name)


def durable_statement(pgmq_names: Sequence[str]) -> sql.Composed:
    """The counts of durable queues (their pgmq names) in one statement: one SELECT per
    queue joined with UNION ALL, each numbered; parameter ``limit``."""
    return sql.SQL(" UNION ALL ").join(
        sql.SQL(QUERIES["queue_stats"]).format(index=sql.Literal(i), queue=_table(pgmq))
        for i, pgmq in enumerate(pgmq_names))


def _durable(name: str, ready: int, delayed: int, held: int, age: float | None, later: int,
             live: int, dead: int) -> QueueStats:
    """A durable queue's counts. ``later``: the rows read of those not ready (delayed or
    held); where a count read :data:`COUNT_LIMIT` rows, ``live`` (the table's live rows in
    PostgreSQL's statistics) gives the estimate."""
    marks: dict[str, str] = {}
    total = max(live, ready + later)
    if ready >= COUNT_LIMIT:
        ready = max(total - later, ready)
        marks.update(ready=ESTIMATE, oldest_age=AT_LEAST)
    if later >= COUNT_LIMIT:
        if marks:  # both capped: how the rest splits is unknown; what was read is sure
            marks.update(delayed=AT_LEAST, held=AT_LEAST)
        else:  # the rows read tell the split of the estimated rest
            waiting = max(total - ready, later)
            delayed = round(waiting * delayed / later)
            held = waiting - delayed
            marks.update(delayed=ESTIMATE, held=ESTIMATE)
    return QueueStats(name, ready, delayed, held, age, dead, _dead_mark(marks, dead))


def _dead_mark(marks: dict[str, str], dead: int) -> dict[str, str]:
    return {**marks, "dead_letters": AT_LEAST} if dead >= COUNT_LIMIT else marks


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
