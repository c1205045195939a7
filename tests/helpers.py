"""What the test modules (and the benchmarks) share: one copy of each helper.

- Waiting: :func:`wait_until` polls a condition (never a timing assertion).
- Processes: :data:`ROOT`, :func:`free_port`, :func:`run_module`, :func:`run_cli`,
  :func:`start_cli`, :func:`embedded_env`, and ``celery worker`` subprocesses run from the
  project root (:func:`worker_process`, :func:`read_log`, :func:`kill_worker`,
  :func:`stop_worker`; the implementation is :mod:`swf_celery.testing`).
- URLs: :func:`swf_url` (broker / result backend URL of a database), :func:`pg_url`.
- SQL: :func:`sql` and :func:`sql_value` run one statement; :func:`queue_size`,
  :func:`read_queue` (reads a broker queue the way the transport does), :func:`next_visible`,
  :func:`connections_named`, :func:`probe_commits` / :func:`commit_settings` (the
  ``synchronous_commit`` each commit ran under).
- Broker test data: :func:`kombu_message`, :func:`publish` / :func:`drain` (kombu),
  :func:`create_task_runs` / :func:`task_runs` (the table ``tests.transport.broker_app``'s
  tasks write to).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg

from swf_celery import testing as _testing
from swf_celery.db import broker_url, normalize_dsn
from swf_celery.testing import kill_worker, read_log, stop_worker

#: The project root: where workers, examples and the CLI run.
ROOT = Path(__file__).resolve().parents[1]
#: The ``swf-celery`` command, as the tests run it.
CLI = [sys.executable, "-m", "swf_celery.cli"]
#: The machine's Redis, DB 7: drain tests and the from_redis example (comparisons only).
REDIS_URL = "redis://127.0.0.1:6379/7"

__all__ = [
    "CLI", "REDIS_URL", "ROOT", "as_role", "commit_settings", "connections_named",
    "create_task_runs", "drain",
    "embedded_env", "error_lines", "free_port", "kill_worker", "kombu_message", "next_visible",
    "pg_url", "probe_commits",
    "publish", "queue_size", "read_log", "read_queue", "run_cli", "run_module", "sql",
    "sql_value", "start_cli", "stop_worker", "swf_url", "task_runs", "wait_until",
    "worker_process",
]


# -- waiting ------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               *, proc: subprocess.Popen[bytes] | None = None, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value, and return that value.

    Raises :class:`AssertionError` naming ``what`` after ``timeout`` seconds, with the end
    of ``proc``'s log when a worker process is given.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            log = f"\nworker log:\n{read_log(proc)[-3000:]}" if proc is not None else ""
            raise AssertionError(f"{what} not reached within {timeout}s{log}")
        time.sleep(interval)


# -- processes ----------------------------------------------------------------------------


def run_hub_until(hub: Any, done: Callable[[], Any], what: str,
                  timeout: float = 5.0) -> None:
    """Run a kombu ``hub`` one iteration at a time until ``done()``; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        hub.run_once()


def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port on ``addr`` that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((addr, 0))
        return int(sock.getsockname()[1])


def run_module(module: str, *args: str, env: Mapping[str, str] | None = None,
               cwd: str | Path | None = None, timeout: float = 120
               ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args…`` to the end; output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *args],
                          env=dict(env) if env is not None else None, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _cli_args(args: tuple[str, ...], database: str | None) -> list[str]:
    return [*args, "-d", database] if database else list(args)


def run_cli(*args: str, database: str | None = None, env: Mapping[str, str] | None = None,
            cwd: str | Path | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    """Run ``swf-celery args…`` (``-d database`` appended when given) to the end."""
    return run_module("swf_celery.cli", *_cli_args(args, database), env=env, cwd=cwd,
                      timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The lines of a command's stderr after its ``database: …`` announcement (every
    command that uses a database names it on stderr first)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("database: ")]


def start_cli(*args: str, database: str | None = None, env: Mapping[str, str] | None = None,
              ) -> subprocess.Popen[str]:
    """Start ``swf-celery args…`` in the background, stdout and stderr piped (text)."""
    return subprocess.Popen(CLI + _cli_args(args, database), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(env) if env is not None else None)


def embedded_env(home: str | Path, port: int) -> dict[str, str]:
    """The environment of an embedded server of its own: ``SWF_HOME`` and port, and no
    ``SWF_DATABASE_URL`` that would point the CLI elsewhere."""
    env = dict(os.environ, SWF_HOME=str(home), SWF_EMBEDDED_PORT=str(port))
    env.pop("SWF_DATABASE_URL", None)
    return env


@contextlib.contextmanager
def worker_process(app: str, **options: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A app worker`` from the project root until the block ends.

    Options as :func:`swf_celery.testing.worker_process`; stopped with TERM to the main
    process only (a warm shutdown), then KILL.
    """
    options.setdefault("cwd", ROOT)
    with _testing.worker_process(app, **options) as proc:
        yield proc


# -- URLs ---------------------------------------------------------------------------------


def as_role(url: str, role: str, password: str | None = None) -> str:
    """``url`` logging in as ``role`` (with ``password``, else none) instead of its user."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    auth = quote(role, safe="") + (f":{quote(password, safe='')}" if password else "")
    return urlunsplit(parts._replace(netloc=f"{auth}@{parts.netloc.rpartition('@')[2]}"))


#: The ``swf://`` URL (broker and result backend) of the database at a URL.
swf_url = broker_url
#: The ``postgresql://`` URL of a database given by any URL we accept (``swf://``…).
pg_url = normalize_dsn


# -- SQL ----------------------------------------------------------------------------------


def sql(url: str, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on its own autocommit connection; return its rows (or [])."""
    with psycopg.connect(pg_url(url), autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def sql_value(url: str, query: Any, params: Any = None) -> Any:
    """The first column of the first row of one statement (None without a row)."""
    rows = sql(url, query, params)
    return rows[0][0] if rows else None


def queue_size(url: str, queue: str) -> int:
    """Messages in a broker queue (``swf.queue_size``: visible and delayed)."""
    return int(sql_value(url, "SELECT swf.queue_size(%s)", (queue,)))


@contextlib.contextmanager
def _connection(conn_or_url: psycopg.Connection[Any] | str) -> Iterator[psycopg.Connection[Any]]:
    if isinstance(conn_or_url, str):
        with psycopg.connect(pg_url(conn_or_url), autocommit=True) as conn:
            yield conn
    else:
        yield conn_or_url


def read_queue(conn_or_url: psycopg.Connection[Any] | str, queue: str, *, qty: int = 100,
               vt: float = 30, no_ack: bool = False) -> list[tuple[int, int, Any, int]]:
    """Read up to ``qty`` visible messages of ``queue`` as the transport does.

    The statements of ``transport/storage.sql`` on the queue's messages: ``read`` hides each
    message for ``vt`` seconds (a consumer now holds it), ``pop`` (``no_ack``) deletes it.
    Rows are ``(msg_id, read_ct, message, priority)``, priority 0 first, then oldest first
    (the row saying when the next message is due, which a read that delivers nothing
    returns, is left out); a queue that does not exist reads as empty.
    """
    from swf_celery.transport.storage import QueueStorage

    with _connection(conn_or_url) as conn:
        row = conn.execute("SELECT pgmq_name, storage FROM swf.queues WHERE name = %s",
                           (queue,)).fetchone()
        if row is None:
            return []
        statement = QueueStorage(queue, *row).statement("pop" if no_ack else "read")
        rows = conn.execute(statement, {"qty": qty, "vt": vt, "acks": [], "receipts": [],
                                        "queue": queue}).fetchall()
    return sorted((r for r in rows if r[0] is not None), key=lambda r: (r[3], r[0]))


def probe_commits(url: str, *tables: str) -> None:
    """Record, in ``public.commit_settings`` (table, operation, setting), the
    ``synchronous_commit`` each transaction that writes one of ``tables`` ("schema.table")
    commits under: a deferred trigger fires at commit, when the setting is final."""
    from psycopg import sql as pgsql

    with psycopg.connect(pg_url(url), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.commit_settings "
                     "(tbl text, op text, setting text)")
        conn.execute("""
            CREATE OR REPLACE FUNCTION public.record_commit_setting() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO public.commit_settings
                VALUES (TG_TABLE_NAME, TG_OP, current_setting('synchronous_commit'));
                RETURN NULL;
            END $$""")
        for table in tables:
            conn.execute(pgsql.SQL(
                "CREATE CONSTRAINT TRIGGER commit_probe AFTER INSERT OR UPDATE OR DELETE "
                "ON {} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                "EXECUTE FUNCTION public.record_commit_setting()").format(
                    pgsql.Identifier(*table.split(".", 1))))


def commit_settings(url: str) -> set[tuple[str, str, str]]:
    """(table, operation, setting) of the commits :func:`probe_commits` recorded."""
    return {(t, op, setting) for t, op, setting in sql(
        url, "SELECT tbl, op, setting FROM public.commit_settings")}


def next_visible(conn_or_url: psycopg.Connection[Any] | str, *queues: str) -> float | None:
    """Seconds until the next message of ``queues`` becomes visible (``swf.queue_arm``):
    0 when one is visible now, None when they hold none."""
    with _connection(conn_or_url) as conn:
        row = conn.execute("SELECT swf.queue_arm(%s)", (list(queues),)).fetchone()
    return None if row is None else row[0]


def connections_named(url: str, application_name: str) -> int:
    """Sessions of ``application_name`` connected to the database at ``url``."""
    return int(sql_value(
        url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
             "AND application_name = %s", (application_name,)))


# -- broker test data ---------------------------------------------------------------------


def kombu_message(task_id: str, *, root_id: str | None = None, priority: int | None = None,
                  queue: str = "celery") -> dict[str, Any]:
    """A message shaped like the dict kombu's virtual Channel._put receives."""
    props: dict[str, Any] = {
        "body_encoding": "utf-8",
        "delivery_info": {"exchange": "", "routing_key": queue},
        "delivery_tag": f"tag-{task_id}",
    }
    if priority is not None:
        props["priority"] = priority
    return {
        "body": '[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]',
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "tests.apps.noop.noop", "id": task_id,
                    "root_id": root_id or task_id, "parent_id": None},
        "properties": props,
    }


def publish(conn: Any, queue: Any, body: Any, **kwargs: Any) -> None:
    """Publish ``body`` (JSON) to a kombu ``queue`` on connection ``conn``, declaring it."""
    from kombu import Producer

    Producer(conn.channel()).publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                                     declare=[queue], serializer="json", **kwargs)


def drain(conn: Any, queue: Any, *, expect: int, ack: bool = True,
          timeout: float = 5.0) -> list[Any]:
    """Consume until ``expect`` messages arrived (or timeout); returns [(body, message)]."""
    from kombu import Consumer

    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append((body, message))
        if ack:
            message.ack()

    deadline = time.monotonic() + timeout
    with Consumer(conn.channel(), [queue], callbacks=[on_message], accept=["json"]):
        while len(got) < expect and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                break
    return got


def create_task_runs(url: str) -> None:
    """(Re)create the table ``task_runs`` that the broker test app's tasks write to."""
    with psycopg.connect(pg_url(url), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS task_runs")
        conn.execute("CREATE TABLE task_runs (id bigserial PRIMARY KEY, tag text, phase text, "
                     "pid integer, at timestamptz DEFAULT clock_timestamp())")


def task_runs(url: str, tag: str | None = None) -> list[tuple[str, str]]:
    """``(tag, phase)`` of every recorded task run, oldest first (only ``tag``'s if given)."""
    rows = sql(url, "SELECT tag, phase FROM task_runs ORDER BY id")
    return [(t, phase) for t, phase in rows if tag is None or t == tag]


# -- HTTP ---------------------------------------------------------------------------------


def sse_events(host: str, port: int, path: str) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of a Server-Sent Events stream (GET ``path``, checked to answer
    200 with ``text/event-stream``) until the server closes it; data is JSON-decoded."""
    import http.client
    import json

    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("GET", path)
    reply = conn.getresponse()
    assert reply.status == 200
    assert reply.getheader("content-type", "").startswith("text/event-stream")
    event, data = "message", ""
    try:
        for raw in reply:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            elif line == "" and data:
                yield event, json.loads(data)
                event, data = "message", ""
    finally:
        conn.close()
