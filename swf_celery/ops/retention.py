"""Retention: what each store keeps, and the batched cleanup that enforces it.

Stores and their defaults (Celery settings, ``app.conf``; ``None`` or ``0`` keeps forever):

==============================  =================================  ===========================
store                           setting                            default
==============================  =================================  ===========================
finished workflow runs, with    ``swf_retention_runs``             30 days after they finished
their step states and tasks
task graphs (goals), unless     ``swf_retention_task_graphs``      30 days after their last
their last run is in progress                                      change
or paused
dynamic flows no run and no     ``swf_retention_flows``            90 days after they were
task graph refers to                                               created, given a step or
                                                                   last run
dead letters (broker)           ``swf_retention_dead_letters``     7 days after dead-lettering
acknowledged messages kept      ``swf_retention_archive``          7 days after the ack
by ``archive_acked``
acknowledged channel            ``swf_retention_channels``         7 days after the ack
messages (messaging)
unacknowledged channel          ``swf_retention_channel_pending``  30 days after they were sent
messages (messaging)
Celery results, groups,         Celery's ``result_expires``        when their expiry passed (a
chords                                                             pending chord's marker: as
                                                                   long again, >= 1 hour)
durable broker queues nobody    ``swf_retention_queues``           30 days (at least 1 hour)
uses: empty, not declared or                                       after their last use
consumed since
==============================  =================================  ===========================

Ages are seconds, a :class:`~datetime.timedelta` or text such as ``"7d"``, ``"12h"``,
``"30m"``. ``swf_retention_batch`` (1000) rows go per statement (queues: at most
:data:`QUEUE_BATCH` per statement, each a DDL), each statement its own short transaction, so
cleanup never holds long locks. Only one session cleans up at a time (a transaction-level
advisory try-lock: others skip, nobody waits).

Cleaning up is an operator's (``swf-celery grant ROLE --operator``, or the schema's owner).
It runs on demand, ``swf-celery cleanup [--older-than 7d] [--dry-run]`` (schedule it as an
operator from cron or a systemd timer), and in every worker whose database role is an operator
(:mod:`swf_celery.ops.retention_worker`, every ``swf_retention_interval`` seconds, default
3600; ``swf_retention = False`` turns it off). A worker logged in as a least-privilege role
says once, at start, that it does not clean up and what to run instead.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from swf_celery.db import DatabaseHandle, load_queries, open_connection, resolve, translate_errors
from swf_celery.errors import ConfigurationError, DatabasePermissionError

QUERIES = load_queries(__package__, "retention.sql")

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: Settings of each store's age (``app.conf``) and their defaults.
SETTINGS = {
    "runs": ("swf_retention_runs", dt.timedelta(days=30)),
    "task_graphs": ("swf_retention_task_graphs", dt.timedelta(days=30)),
    "flows": ("swf_retention_flows", dt.timedelta(days=90)),
    "dead_letters": ("swf_retention_dead_letters", dt.timedelta(days=7)),
    "acked": ("swf_retention_archive", dt.timedelta(days=7)),
    "channels": ("swf_retention_channels", dt.timedelta(days=7)),
    "channel_pending": ("swf_retention_channel_pending", dt.timedelta(days=30)),
    "queues": ("swf_retention_queues", dt.timedelta(days=30)),
}
DEFAULT_BATCH = 1000
#: Durable queues dropped per statement at most (each drop is DDL on two tables).
QUEUE_BATCH = 50


def parse_age(value: Any, setting: str = "age") -> dt.timedelta | None:
    """An age from seconds, a timedelta or text (``"7d"``); None or 0: keep forever."""
    if value is None or value is False:
        return None
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and _AGE.match(value):
        number, unit = _AGE.match(value).groups()  # type: ignore[union-attr]
        seconds = float(number) * _UNIT[unit]
    else:
        raise ConfigurationError(
            f"{setting} = {value!r} is not an age: give seconds, a timedelta or text such "
            "as '7d', '12h', '30m'")
    if seconds < 0:
        raise ConfigurationError(f"{setting} = {value!r} must not be negative")
    return dt.timedelta(seconds=seconds) if seconds else None


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each store keeps what is finished (None: forever)."""

    runs: dt.timedelta | None = SETTINGS["runs"][1]
    task_graphs: dt.timedelta | None = SETTINGS["task_graphs"][1]
    flows: dt.timedelta | None = SETTINGS["flows"][1]
    dead_letters: dt.timedelta | None = SETTINGS["dead_letters"][1]
    acked: dt.timedelta | None = SETTINGS["acked"][1]
    channels: dt.timedelta | None = SETTINGS["channels"][1]
    channel_pending: dt.timedelta | None = SETTINGS["channel_pending"][1]
    #: Unused durable queues (never less than an hour: see ``swf._retention_queue_floor``).
    queues: dt.timedelta | None = SETTINGS["queues"][1]
    #: Also delete results stored without an expiry that are older than this.
    results_without_expiry: dt.timedelta | None = None
    batch: int = DEFAULT_BATCH

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any] | None) -> RetentionPolicy:
        """The policy set by a Celery app's settings (defaults for those not set)."""
        conf = conf or {}
        ages: dict[str, Any] = {}
        for store, (setting, default) in SETTINGS.items():
            ages[store] = parse_age(conf.get(setting, default), setting)
        batch = conf.get("swf_retention_batch", DEFAULT_BATCH)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ConfigurationError(
                f"swf_retention_batch = {batch!r} must be a whole number of rows >= 1")
        return cls(**ages, batch=batch)

    def older_than(self, age: dt.timedelta) -> RetentionPolicy:
        """The same policy with every store's age set to ``age`` (``cleanup --older-than``)."""
        return replace(self, runs=age, task_graphs=age, flows=age, dead_letters=age,
                       acked=age, channels=age, channel_pending=age, queues=age,
                       results_without_expiry=age)


@dataclass
class CleanupReport:
    """Rows deleted (or, for a dry run, that would be) per store."""

    deleted: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    #: Another session was cleaning up: this run stopped early (it will catch up next time).
    busy: bool = False

    @property
    def total(self) -> int:
        """Rows over all stores."""
        return sum(self.deleted.values())


def role_and_part(repo: DatabaseHandle | None = None) -> tuple[str, str | None]:
    """The role ``repo`` logs in as and its part (``client``, ``worker``, ``operator``; None
    when it was granted none). Cleaning up needs ``operator``.

    It asks on a connection of its own, closed after, so that a worker asking at start
    keeps no pooled connection open (the worker's connection budget, README)."""
    with translate_errors(), open_connection(resolve(repo).dsn, "client") as conn:
        row = conn.execute(QUERIES["session_role"]).fetchone()
        role = str(row[0]) if row else ""
        try:
            with translate_errors():
                found = conn.execute(QUERIES["caller_part"]).fetchone()
        except DatabasePermissionError:  # granted no part: the function is not even executable
            return role, None
    part = found[0] if found else None
    return role, None if part is None else str(part)


def cleanup(repo: DatabaseHandle | None = None, policy: RetentionPolicy | None = None, *,
            dry_run: bool = False, now: dt.datetime | None = None) -> CleanupReport:
    """Delete what ``policy`` no longer keeps, in batches; returns the counts per store.

    Each batch is one statement in its own transaction. When another session is cleaning
    up, this one stops at once (``report.busy``).
    """
    db = resolve(repo)
    policy = policy or RetentionPolicy()
    now = now or dt.datetime.now(dt.timezone.utc)
    report = CleanupReport(dry_run=dry_run)

    def before(age: dt.timedelta | None) -> dt.datetime | None:
        return None if age is None else now - age

    # Runs first (a dynamic flow remembers its newest deleted run), graphs before flows (a
    # graph's flow may go in the same pass), queues last (DDL).
    jobs: list[tuple[str, str, dict[str, Any]]] = [
        ("runs", "runs", {"before": before(policy.runs)}),
        ("task_graphs", "task_graphs", {"before": before(policy.task_graphs)}),
        ("flows", "flows", {"before": before(policy.flows)}),
        ("dead_letters", "archives", {"kind": "dead_letters",
                                      "before": before(policy.dead_letters)}),
        ("acked", "archives", {"kind": "acked", "before": before(policy.acked)}),
        ("channels", "archives", {"kind": "channels", "before": before(policy.channels)}),
        ("channel_pending", "archives", {"kind": "channel_pending",
                                         "before": before(policy.channel_pending)}),
        ("results", "results", {"before": before(policy.results_without_expiry)}),
        ("queues", "queues", {"before": before(policy.queues)}),
    ]
    for store, query, params in jobs:
        if store != "results" and params["before"] is None:
            continue
        batch = min(policy.batch, QUEUE_BATCH) if store == "queues" else policy.batch
        total = 0
        while True:
            n = int(db.fetch_value(QUERIES[query], {**params, "batch": batch,
                                                    "dry": dry_run}))
            if n < 0:
                report.busy = True
                break
            total += n
            if dry_run or n < batch:
                break
        report.deleted[store] = total
        if report.busy:
            break
    return report
