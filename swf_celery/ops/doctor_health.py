"""PostgreSQL's health for this workload, as the doctor's findings (:mod:`.doctor`).

Each ``check_*`` function takes a connection and the :class:`~.doctor_findings.Limits` and
returns its findings: the vacuum horizon (old transactions, prepared transactions,
replication slots), dead rows of the queue and state tables, the notification queue and the
listeners that stopped reading (:func:`swf_celery.db.notification_health`), connections
against ``max_connections``, schema and function versions against the code, retention, dead
letters and queues nobody consumes. A check that the role may not run (a part without
``pg_read_all_stats``, say) says so as an ``info`` finding instead of failing the report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from swf_celery.db import load_queries, notification_health, schema
from swf_celery.ops.doctor_findings import Finding, Limits, seconds, size

QUERIES = load_queries(__package__, "doctor_health.sql")

Check = Callable[[psycopg.Connection[Any], Limits], list[Finding]]


def check_horizon(conn: psycopg.Connection[Any], limits: Limits) -> list[Finding]:
    """Transactions and prepared transactions older than ``stalled_after`` that hold back
    vacuum; replication slots that do, or keep WAL while nobody uses them."""
    found: list[Finding] = []
    for pid, role, app, addr, state, age, xids, query in conn.execute(
            QUERIES["horizon_sessions"], {"after": limits.stalled_after}):
        idle = (state or "").startswith("idle in transaction")
        who = f"{app or 'no application_name'} as {role}" + (f" from {addr}" if addr else "")
        found.append(Finding(
            "vacuum_horizon", "error" if idle else "warning", f"pid {pid}",
            f"session {pid} ({who}) has been {state} for {seconds(age)} ({xids} transactions "
            "ago): vacuum cannot remove the dead rows of the queue and state tables",
            f"end it: SELECT pg_terminate_backend({pid}); and set "
            "idle_in_transaction_session_timeout" if idle else
            f"let it finish or cancel it: SELECT pg_cancel_backend({pid})",
            {"pid": pid, "role": role, "application_name": app, "client_addr": addr,
             "state": state, "seconds": age, "xid_age": xids, "query": query}))
    for gid, owner, age, xids in conn.execute(QUERIES["prepared_xacts"],
                                              {"after": limits.stalled_after}):
        found.append(Finding(
            "vacuum_horizon", "error", f"prepared {gid}",
            f"prepared transaction {gid!r} (owner {owner}) is {seconds(age)} old: it holds "
            "back vacuum",
            f"finish it: COMMIT PREPARED '{gid}' or ROLLBACK PREPARED '{gid}'",
            {"gid": gid, "owner": owner, "seconds": age, "xid_age": xids}))
    for name, kind, active, holds_xmin, xids, wal in conn.execute(QUERIES["replication_slots"]):
        if active and not holds_xmin:
            continue
        why = "holds back vacuum" if holds_xmin else f"keeps {size(wal)} of WAL"
        found.append(Finding(
            "replication_slot", "warning", f"slot {name}",
            f"{'active' if active else 'inactive'} {kind} replication slot {name!r} {why}",
            "drop it if its consumer is gone: SELECT pg_drop_replication_slot"
            f"('{name}')" if not active else "check that its consumer keeps up",
            {"slot": name, "type": kind, "active": active, "xid_age": xids, "wal_bytes": wal}))
    return found


def check_tables(conn: psycopg.Connection[Any], limits: Limits) -> list[Finding]:
    """Queue and state tables whose dead rows exceed the limits."""
    found: list[Finding] = []
    total = 0
    for table, nbytes, live, dead, since_vacuum in conn.execute(QUERIES["tables"]):
        total += nbytes
        if dead < limits.dead_rows or dead < limits.dead_ratio * max(live, 1):
            continue
        found.append(Finding(
            "dead_rows", "warning", table,
            f"{table} has {dead} dead row versions for {live} live ({size(nbytes)}; last "
            f"vacuumed {seconds(since_vacuum) + ' ago' if since_vacuum is not None else 'never'})",
            f"VACUUM (ANALYZE) {table}; if they stay, end what holds the vacuum horizon",
            {"table": table, "bytes": nbytes, "live": live, "dead": dead,
             "seconds_since_vacuum": since_vacuum}))
    found.append(Finding("tables", "ok", "swf, pgmq",
                         f"queue and state tables use {size(total)}", "nothing to do",
                         {"bytes": total}))
    return found


def check_notifications(conn: psycopg.Connection[Any], limits: Limits) -> list[Finding]:
    """The notification queue's usage, NOTIFYs skipped, and sessions that stopped reading."""
    health = notification_health(conn, stalled_after=limits.stalled_after)
    found: list[Finding] = []
    details = {"usage": health.usage, "limit": health.limit, "skipped": health.skipped}
    if health.skipping:
        found.append(Finding(
            "notification_queue", "error", "pg_notification_queue_usage",
            f"PostgreSQL's notification queue is {health.usage:.0%} full: wake-ups and "
            f"events are being skipped ({health.skipped} so far)",
            "end the listener that stopped reading (below); workers fall back to polling",
            details))
    elif health.usage >= limits.notify_warning:
        found.append(Finding(
            "notification_queue", "warning", "pg_notification_queue_usage",
            f"PostgreSQL's notification queue is {health.usage:.0%} full (hints are skipped "
            f"from {health.limit:.0%})", "end the listener that stopped reading (below)",
            details))
    else:
        found.append(Finding(
            "notification_queue", "ok", "pg_notification_queue_usage",
            f"notification queue {health.usage:.1%} full; {health.skipped} NOTIFYs skipped "
            "so far", "nothing to do", details))
    for s in health.suspects:
        how = ("blocked writing to a client that does not read"
               if s.wait_event == "Client:ClientWrite" else f"{s.state}")
        found.append(Finding(
            "listener", "error" if health.skipping else "warning", f"pid {s.pid}",
            f"session {s.pid} ({s.application_name or 'no application_name'} as {s.role}) "
            f"has been {how} for {seconds(s.seconds)}: if it LISTENs, it holds the "
            "notification queue",
            f"end it: SELECT pg_terminate_backend({s.pid}); a listener must not stay in a "
            "transaction",
            {"pid": s.pid, "database": s.database, "role": s.role,
             "application_name": s.application_name, "client_addr": s.client_addr,
             "state": s.state, "wait_event": s.wait_event, "seconds": s.seconds,
             "query": s.query}))
    return found


def check_connections(conn: psycopg.Connection[Any], limits: Limits) -> list[Finding]:
    """Client sessions by application and role against ``max_connections``."""
    groups = [{"application_name": app, "role": role, "database": dbname, "count": n}
              for app, role, dbname, n in conn.execute(QUERIES["connections"])]
    limit = int(conn.execute(QUERIES["connection_limit"]).fetchone()[0])  # type: ignore[index]
    used = sum(g["count"] for g in groups)
    share = used / max(limit, 1)
    severity = ("error" if share >= limits.connections_error else
                "warning" if share >= limits.connections_warning else "ok")
    top = ", ".join(f"{g['application_name']} as {g['role']}: {g['count']}" for g in groups[:3])
    return [Finding(
        "connections", severity, "max_connections",
        f"{used} of {limit} connections in use ({share:.0%}); most: {top}",
        "nothing to do" if severity == "ok" else
        "lower the pools (swf_pool_size, worker concurrency) or put PgBouncer in front "
        "(listen_url for LISTEN)",
        {"used": used, "limit": limit, "by_application": groups})]


def check_schema(conn: psycopg.Connection[Any], limits: Limits) -> list[Finding]:
    """Migrations and stored functions against this code's."""
    if not conn.execute(schema.QUERIES["schema_exists"]).fetchone()[0]:  # type: ignore[index]
        return [Finding("schema", "error", "swf", "the swf schema is not migrated",
                        "run `swf-celery migrate`")]
    version = int(conn.execute(schema.QUERIES["current_version"]).fetchone()[0])  # type: ignore[index]
    latest = schema.latest_version()
    if version != latest:
        newer = version > latest
        return [Finding(
            "schema", "error", "schema_migrations",
            f"the database's schema is at version {version}, this code's at {latest}",
            "upgrade swf-celery (this code is older than the database)" if newer else
            "run `swf-celery migrate`", {"database": version, "code": latest})]
    recorded = {name: (checksum, by) for name, checksum, by
                in conn.execute(schema.QUERIES["function_checksums"])}
    code = schema.code_version()
    found = []
    for file in schema.function_files():
        checksum, by = recorded.get(file.name, (None, None))
        if checksum == file.checksum:
            continue
        what = ("are missing" if checksum is None else
                f"differ from this code's (applied by swf-celery {by}, this is {code})")
        found.append(Finding(
            "functions", "error", f"sql/functions/{file.name}.sql",
            f"the database's stored functions of {file.name}.sql {what}",
            "run `swf-celery migrate` with the code the workers run",
            {"file": file.name, "applied_by": by, "code": code,
             "recorded_checksum": checksum, "code_checksum": file.checksum}))
    if not found:
        found.append(Finding("schema", "ok", "schema_migrations",
                             f"schema version {version} and functions match this code",
                             "nothing to do", {"database": version, "code": latest}))
    return found


def check_retention(conn: psycopg.Connection[Any], limits: Limits) -> list[Finding]:
    """Whether retention runs: what it should have removed a day ago is still there."""
    runs, dead, results = conn.execute(  # type: ignore[misc]
        QUERIES["retention_overdue"], {"runs": "31 days", "dead_letters": "8 days"}).fetchone()
    if not (runs or dead or results):
        return [Finding("retention", "ok", "retention", "nothing is past its retention",
                        "nothing to do")]
    return [Finding(
        "retention", "warning", "retention",
        f"retention does not seem to run: {runs} finished runs older than 31 days, {dead} "
        f"dead letters older than 8 days, {results} results expired a day ago or more",
        "run a worker whose role is an operator (swf_retention on) or schedule "
        "`swf-celery cleanup`", {"runs": runs, "dead_letters": dead, "results": results})]


def check_dead_letters(conn: psycopg.Connection[Any], limits: Limits) -> list[Finding]:
    """Dead letters by queue."""
    return [Finding(
        "dead_letters", "warning", f"queue {queue}",
        f"queue {queue!r} has {count} dead letters (newest {newest:%Y-%m-%d %H:%M:%S}; "
        f"mostly {reason!r})",
        f"read them in the console (/queues/{queue}), fix the cause, then requeue or purge",
        {"queue": queue, "count": count, "newest": newest.isoformat(), "reason": reason})
        for queue, count, newest, reason in conn.execute(QUERIES["dead_letters"])]


def check_queues(conn: psycopg.Connection[Any], limits: Limits) -> list[Finding]:
    """Durable queues whose messages wait with nobody consuming, and messages held by
    consumers that are gone (see :func:`reader_gone`)."""
    found: list[Finding] = []
    for queue, visible, waiting, delayed, held, idle in conn.execute(QUERIES["queues"]):
        if not visible or waiting is None or waiting < limits.stalled_after:
            continue
        details = {"queue": queue, "visible": visible, "oldest_waiting_seconds": waiting,
                   "delayed": delayed, "held": held, "seconds_since_consumed": idle}
        if idle is None or idle > limits.consumer_gone_after:
            found.append(Finding(
                "queue_consumers", "error", f"queue {queue}",
                f"queue {queue!r} has {visible} messages waiting (the oldest "
                f"{seconds(waiting)}) and no worker consumed it for {seconds(idle)}",
                f"start a worker for it: celery -A APP worker -Q {queue}", details))
        else:
            found.append(Finding(
                "queue_backlog", "warning", f"queue {queue}",
                f"queue {queue!r} has {visible} messages waiting, the oldest for "
                f"{seconds(waiting)}, while workers consume it",
                "add workers or concurrency for this queue", details))
    since = sessions_since(conn)
    for queue, msg_id, read_ct, vt, read_at, task_id, task, left in conn.execute(
            QUERIES["held_messages"], {"limit": 1000}):
        if not holder_gone(read_at, left, since, limits):
            continue
        found.append(Finding(
            "held_by_gone_worker", "warning", f"queue {queue} message {msg_id}",
            f"message {msg_id} of queue {queue!r} ({task or 'task'} {task_id}) was delivered "
            f"{read_ct} time(s); its worker is gone (it no longer extends it) and it is "
            f"invisible until {vt:%H:%M:%S} ({seconds(left)})",
            "nothing to do: it is delivered again then; a lower visibility_timeout brings "
            "such messages back sooner",
            {"queue": queue, "msg_id": msg_id, "read_ct": read_ct, "vt": vt.isoformat(),
             "task_id": task_id, "task": task}))
    return found


def sessions_since(conn: psycopg.Connection[Any]) -> tuple[Any, Any]:
    """When the oldest other session of the database connected, and when the server started."""
    return conn.execute(QUERIES["sessions_since"]).fetchone()  # type: ignore[return-value]


def reader_gone(read_at: Any, since: tuple[Any, Any]) -> bool | None:
    """Whether the session that took a message at ``read_at`` is gone: True when every other
    session of the database connected after it (so none of them read it), None when the
    server restarted since (every session is new: its reader may have reconnected)."""
    oldest, started = since
    if read_at is None:
        return None
    if started is not None and started > read_at:
        return None
    return oldest is None or oldest > read_at


def holder_gone(read_at: Any, remaining: float, since: tuple[Any, Any],
                limits: Limits) -> bool:
    """Whether the consumer holding a message (delivered at ``read_at``, visible again in
    ``remaining`` seconds) is gone: it stopped extending it (:meth:`Limits.not_extended`),
    or no session connected then is left (:func:`reader_gone`)."""
    return limits.not_extended(remaining) or reader_gone(read_at, since) is True


#: The checks of a report, in the order they are printed.
CHECKS: tuple[Check, ...] = (check_schema, check_horizon, check_tables, check_notifications,
                             check_connections, check_retention, check_dead_letters,
                             check_queues)
