"""Least privilege: give a database role exactly what its part of a deployment needs.

:func:`grant` (``swf-celery grant ROLE --worker|--client|--operator``) runs the blocks of
``grants.sql`` with the role and the schema owner as quoted identifiers
(:class:`psycopg.sql.Identifier`; nothing of the role's name is spliced as text):

- **worker**: consume and publish (the broker's queue tables), store results and chord
  state; report the steps it runs, expire and reap queues and sweep through the functions;
- **client** (a web process, a script): publish tasks (it cannot read or delete queued
  messages), read and forget results, start and watch runs (local steps included), goals,
  send, listen to and acknowledge messages, revoke the tasks it published;
- **operator**: lifecycle (pause, resume, cancel, retry, revoke any task, purge, delete
  queues, requeue dead letters) and cleanup: every row of the ``swf`` and ``pgmq`` schemas,
  no DDL.

Table privileges cover what reads and the broker's hot path need; every other change goes
through a function that runs as its owner and checks the caller's part, which a grant
records in ``swf.roles`` (``sql/functions/privileges.sql``).

A grant first revokes what the role had on both schemas, so it is exact and may be repeated
(after each ``migrate``: see the rule for new tables in ``grants.sql``). Run it as the role
that ran ``swf-celery migrate`` (or a superuser): queue tables created later are granted
through that role's default privileges. Creating the role (``CREATE ROLE … LOGIN
PASSWORD …``) stays the administrator's job.
"""

from __future__ import annotations

from typing import Literal

from psycopg import sql

from swf_celery.db import DatabaseHandle, load_queries, resolve, schema
from swf_celery.errors import ArgumentError

QUERIES = load_queries(__package__, "grants.sql")
#: The parts a role can be granted.
KINDS = ("worker", "client", "operator")
Kind = Literal["worker", "client", "operator"]


def grant(role: str, kind: Kind, repo: DatabaseHandle | None = None) -> None:
    """Give ``role`` exactly the privileges of a ``kind`` ("worker", "client" or
    "operator") on the database of ``repo``, in one transaction."""
    if kind not in KINDS:
        raise ArgumentError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    if not isinstance(role, str) or not role or "\x00" in role:
        raise ArgumentError(f"role must be a role name, got {role!r}")
    with resolve(repo).connection() as conn:
        exists = conn.execute(QUERIES["role_exists"], {"role": role}).fetchone()
        if not exists or not exists[0]:
            raise ArgumentError(f"role {role!r} does not exist: CREATE ROLE … LOGIN PASSWORD … "
                                "first (swf-celery grants privileges, it creates no role)")
        schema.require_current(conn)  # the blocks name this release's tables and functions
        owner_row = conn.execute(QUERIES["owner"]).fetchone()
        names = {"role": sql.Identifier(role), "owner": sql.Identifier(owner_row[0])}  # type: ignore[index]
        for block in ("reset", kind):
            conn.execute(sql.SQL(QUERIES[block]).format(**names))  # type: ignore[arg-type]
        conn.execute(QUERIES["record_part"], {"role": role, "part": kind})
        conn.execute(QUERIES["grant_channels"], {"role": role})
