"""The beat scheduler on PostgreSQL: ``celery -A app beat -S swf_celery.schedules.Scheduler``.

Every beat process runs the same loop, and any number may run. Each tick of the loop is one
transaction: take the due entries no other beat holds (``swf.schedule_due``, row locks with
SKIP LOCKED), publish each due tick's message, record the tick and the entry's next run
(``swf.schedule_fired``), commit. With the ``swf://`` broker the message is inserted on the
same connection, in the same transaction, so a tick is recorded if and only if its message
is queued: a beat killed mid-tick leaves neither, and the entry's lock is gone with its
connection, so the next beat fires the tick within ``busy_wait`` seconds. A tick is the
primary key of its record: no tick fires twice.

With another broker (Redis, RabbitMQ) the message is published inside the transaction,
before its commit: a beat that dies (or loses the database) between the publish and the
commit leaves the tick unrecorded, and another beat sends it again. That window is one
round trip; ticks are then at least once, never lost.

Settings (``app.conf``):

- ``beat_schedule``: entries stored when a beat starts (source ``config``); entries gone
  from it are deleted, as Celery's own scheduler drops them. Our keys beside Celery's:
  ``workflow``, ``input``, ``missed``, ``max_missed``, ``skip_if_running``
  (:mod:`swf_celery.schedules.entries`).
- ``beat_max_loop_interval``: longest sleep between ticks, so the longest an edit waits
  (default here 5 s, Celery's 300 s is for its file schedule).
- ``swf_beat_grace`` (30): seconds a tick may be late and still fire as itself; older
  ticks are missed and the entry's policy applies (:mod:`swf_celery.schedules.missed`).
- ``swf_database_url``: the schedule's database when the broker is not ``swf://``.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import os
import socket
from typing import Any

import psycopg
from celery import beat
from celery.schedules import crontab
from celery.utils import uuid
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from swf_celery.db import database_url, resolve
from swf_celery.errors import DatabaseUnavailable, ScheduleError
from swf_celery.schedules import codec, missed, store
from swf_celery.workflows import coordinator, definition

logger = logging.getLogger(__name__)
QUERIES = store.QUERIES

#: Default of ``swf_beat_grace``: seconds a tick may be late and still fire as itself.
DEFAULT_GRACE = 30.0
#: Seconds to wait before looking again at a due entry another beat holds.
BUSY_WAIT = 0.2
#: Seconds to wait after the database or the broker failed a tick.
RETRY_WAIT = 1.0
#: Most entries fired in one transaction.
BATCH = 100


class Scheduler(beat.Scheduler):
    """Celery beat's scheduler with the schedule, the lock and the record in PostgreSQL."""

    max_interval = 5.0

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self.beat_id = f"{socket.gethostname()}:{os.getpid()}"
        self.grace = float(app.conf.get("swf_beat_grace") or DEFAULT_GRACE)
        self.database = resolve(database_url(app=app).url)
        self._own: psycopg.Connection[Any] | None = None
        super().__init__(app, *args, **kwargs)

    # -- Celery's hooks ----------------------------------------------------------------------

    def setup_schedule(self) -> None:
        """Store ``beat_schedule``'s entries (and Celery's default ones); drop those gone."""
        config = dict(self.app.conf.beat_schedule or {})
        if (self.app.conf.result_expires and not self.app.backend.supports_autoexpire
                and "celery.backend_cleanup" not in config):
            config["celery.backend_cleanup"] = {
                "task": "celery.backend_cleanup", "schedule": crontab("0", "4", "*"),
                "options": {"expires": 12 * 3600}}
        for name, given in config.items():
            store.put(name, given, source="config", app=self.app, repo=self.database)
        dropped = store.prune(list(config), repo=self.database)
        logger.info("beat: %d entries from beat_schedule stored%s", len(config),
                    f", {dropped} no longer there deleted" if dropped else "")

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Fire the due ticks no other beat holds; return the seconds to sleep."""
        try:
            conn = self._connection()
            with conn.transaction():
                rows = conn.cursor(row_factory=dict_row).execute(
                    QUERIES["due"], {"limit": BATCH}).fetchall()
                for row in rows:
                    self._fire(conn, row)
            if len(rows) == BATCH:
                return 0.0
            next_due = conn.execute(QUERIES["next_due"]).fetchone()
        except self._failures(psycopg.Error) as exc:
            logger.warning("beat: tick failed, trying again in %ss: %s", RETRY_WAIT, exc)
            self._drop_connections()
            return RETRY_WAIT
        wait = next_due[0] if next_due else None
        if wait is None:
            return float(self.max_interval)
        if wait <= 0:  # another beat holds it: should that beat die, take it over soon
            return BUSY_WAIT
        return float(min(wait, self.max_interval))

    def sync(self) -> None:
        """Nothing to write: every tick commits its record."""

    def close(self) -> None:
        """Release the broker connection and this beat's own database connection."""
        try:
            super().close()
        finally:
            if self._own is not None:
                self._own.close()
                self._own = None

    @property
    def schedule(self) -> dict[str, beat.ScheduleEntry]:  # type: ignore[override]
        """The stored entries as Celery's entries (for ``celery beat``'s remote control)."""
        result = {}
        for entry in store.list_entries(self.database):
            if entry.task is None:
                continue
            result[entry.name] = beat.ScheduleEntry(
                name=entry.name, task=entry.task, args=entry.args, kwargs=entry.kwargs,
                options=entry.options, schedule=codec.decode(entry.schedule, self.app),
                last_run_at=entry.last_run_at, total_run_count=entry.total_run_count,
                app=self.app)
        return result

    @property
    def info(self) -> str:
        """The banner line of ``celery beat``."""
        return (f"    . schedule -> PostgreSQL {self.database!r}, beat {self.beat_id}, "
                f"grace {self.grace:g}s")

    # -- firing --------------------------------------------------------------------------------

    def _fire(self, conn: psycopg.Connection[Any], row: dict[str, Any]) -> None:
        """Fire entry ``row``'s due ticks and record them, inside the tick's transaction.

        An entry that cannot fire (a task name the broker refuses, a workflow that does not
        import) loses those ticks with an error logged, as with Celery's scheduler; a lost
        database or broker fails the whole tick, which is then tried again.
        """
        name = row["name"]
        try:
            schedule = codec.decode(row["schedule"], self.app)
            fired, next_run_at = missed.plan(
                schedule, row["next_run_at"], row["now"], policy=row["missed"],
                max_missed=row["max_missed"], grace=self.grace)
        except (ScheduleError, ValueError) as exc:
            logger.error("beat: entry %r is broken and stays paused until fixed: %s", name, exc)
            store_fired(conn, row["id"], [], self.beat_id, row["now"] + dt.timedelta(days=3650))
            return
        records: list[dict[str, Any]] = []
        try:
            with conn.transaction():  # a savepoint: one entry's failure spares the others
                for tick in fired:
                    records.append(self._start(conn, row, tick, records))
                    if tick.missed:
                        logger.warning("beat: entry %r: %d missed ticks (policy %s)", name,
                                       tick.missed, row["missed"])
                store_fired(conn, row["id"], records, self.beat_id, next_run_at)
        except self._failures(psycopg.OperationalError, psycopg.InterfaceError,
                              broker_channel=False):
            raise
        except Exception as exc:  # noqa: BLE001 - any error of one entry's task or workflow
            logger.error("beat: entry %r could not fire its tick at %s: %s", name,
                         fired[0].at if fired else row["next_run_at"], exc, exc_info=True)
            store_fired(conn, row["id"], [], self.beat_id, next_run_at)

    def _start(self, conn: psycopg.Connection[Any], row: dict[str, Any], tick: missed.Tick,
               earlier: list[dict[str, Any]]) -> dict[str, Any]:
        """Start tick ``tick`` of entry ``row`` (``earlier``: the ticks this transaction
        started before it); its record for ``swf.schedule_fired``."""
        record: dict[str, Any] = {"tick_at": tick.at.isoformat(), "missed": tick.missed}
        if row["workflow"] is not None:
            # A run this transaction started is not yet in a recorded tick: check both.
            if row["skip_if_running"] and (
                    any(r["outcome"] == "started" for r in earlier) or conn.execute(
                        QUERIES["run_active"], {"id": row["id"]}).fetchone()[0]):  # type: ignore[index]
                logger.info("beat: entry %r: previous run still in progress, tick skipped",
                            row["name"])
                return {**record, "outcome": "skipped"}
            workflow = definition.load(import_workflow(row["workflow"]))
            if workflow.has_local_steps:
                raise ScheduleError(f"workflow {row['workflow']} has local steps, which would "
                                    "run inside beat: make them Celery tasks")
            run_id = coordinator.start_run_on(conn, workflow, row["kwargs"])
            logger.info("beat: entry %r started run %s", row["name"], run_id)
            return {**record, "outcome": "started", "run_id": run_id}
        task_id = uuid()
        # As Celery's Scheduler.apply_async, without its wrapping of errors (a lost broker
        # must fail the tick, not the entry). retry=False: kombu's retry would publish again
        # on a new connection, outside this transaction; the tick is tried again instead.
        options = {**row["options"], "task_id": task_id, "retry": False,
                   "producer": self.producer}
        task = self.app.tasks.get(row["task"])
        if task is not None:
            task.apply_async(row["args"], row["kwargs"], **options)
        else:
            self.app.send_task(row["task"], row["args"], row["kwargs"], **options)
        logger.info("beat: entry %r sent %s[%s]", row["name"], row["task"], task_id)
        return {**record, "outcome": "sent", "task_id": task_id}

    # -- connections ---------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        """The connection of a tick's transaction: the broker's own with ``swf://`` (the
        message and the record commit together), else one of this beat's."""
        transport = self.producer.connection.transport
        pg_connection = getattr(transport, "pg_connection", None)
        if pg_connection is not None:
            conn: psycopg.Connection[Any] = pg_connection()
            return conn
        if self._own is None or self._own.closed:
            self._own = self.database.connect(role="broker")
        return self._own

    def _failures(self, *database: type[BaseException], broker_channel: bool = True
                  ) -> tuple[type[BaseException], ...]:
        """``database``'s errors, a lost database and the broker's connection (and with
        ``broker_channel``, channel) errors: what fails a whole tick, tried again, rather
        than one entry."""
        found: tuple[type[BaseException], ...] = (*database, DatabaseUnavailable)
        connection = self.__dict__.get("connection")
        if connection is not None:
            found += tuple(connection.connection_errors)
            if broker_channel:
                found += tuple(connection.channel_errors)
        return found

    def _drop_connections(self) -> None:
        """Forget the producer and connections; the next tick opens new ones."""
        try:
            beat.Scheduler.close(self)
        except Exception:  # noqa: BLE001 - closing a broken connection may fail too
            logger.debug("beat: closing the broken connection failed", exc_info=True)
        if self._own is not None and not self._own.closed:
            self._own.close()
        self._own = None


def store_fired(conn: psycopg.Connection[Any], schedule_id: int, records: list[dict[str, Any]],
                beat_id: str, next_run_at: dt.datetime) -> None:
    """Record entry ``schedule_id``'s fired ticks and its next run (``swf.schedule_fired``)."""
    conn.execute(QUERIES["fired"], {"id": schedule_id, "ticks": Jsonb(records),
                                    "beat": beat_id, "next_run_at": next_run_at})


def import_workflow(path: str) -> Any:
    """The workflow class (or module) of ``"module:attribute"``."""
    module_name, _, attribute = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in filter(None, attribute.split(".")):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ScheduleError(f"workflow {path!r} does not import: {exc}") from None
    return found
