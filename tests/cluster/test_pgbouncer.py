"""Everything but LISTEN through PgBouncer in transaction pooling mode: a real worker
runs tasks (results stored), a workflow and a chord through it, LISTEN goes direct."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from celery import Celery, chord

import swf_celery as swf
from swf_celery import db
from tests.cluster import app as cluster_app
from tests.cluster.pgbouncer import pgbouncer, unavailable_reason
from tests.helpers import read_log, worker_process

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable_reason() is not None,
                                                   reason=str(unavailable_reason()))]


@pytest.fixture
def pooled_url(db_url: str) -> Iterator[str]:
    with pgbouncer(db_url, pool_size=4) as url:
        yield url


def _server_pids(pooled_url: str) -> set[int]:
    """Backend pids of PgBouncer's server connections (its admin console)."""
    admin = db.split_listen_url(pooled_url)[0].rsplit("/", 1)[0] + "/pgbouncer"
    with psycopg.connect(admin, autocommit=True, prepare_threshold=None) as conn:
        cur = conn.execute("SHOW SERVERS")
        columns = [c.name for c in cur.description or []]
        return {int(row[columns.index("remote_pid")]) for row in cur.fetchall()}


def test_worker_and_client_through_pgbouncer(db_url: str, pooled_url: str) -> None:
    client = Celery("pooled_client", broker=db.broker_url(pooled_url),
                    backend=db.broker_url(pooled_url), set_as_current=False)
    client.conf.task_default_queue = cluster_app.QUEUE
    env = {"SWF_CLUSTER_URL": pooled_url}
    with worker_process("tests.cluster.app", queues=[cluster_app.QUEUE], env=env,
                        concurrency=8, pool="threads") as proc:
        try:
            # More than psycopg's prepare threshold (5) of every statement.
            results = [client.send_task("tests.cluster.app.nap", (0.01,)) for _ in range(60)]
            assert len({r.get(timeout=60) for r in results}) == 1
            header = [client.signature("tests.cluster.app.nap", (0.01,)) for _ in range(5)]
            assert len(chord(header)(client.signature("tests.cluster.app.nap", (0.0,),
                                                      immutable=True)).get(timeout=60)) > 0
            for n in range(3):
                run = swf.Executor.execute(cluster_app.Chain3, {"n": n}, pooled_url,
                                           timeout=60_000)
                assert run.output == {"finish": (n + 1) * 2}
            with psycopg.connect(db_url, autocommit=True) as conn:
                # LISTEN sessions by the role they name (a listener's last statement is
                # the check of skipped NOTIFYs it runs each second, not its LISTEN).
                listening = {pid for pid, in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'swf-listen@%%'").fetchall()}
            pooled = _server_pids(pooled_url)
        finally:
            client.close()
        log = read_log(proc)
    assert pooled, "nothing went through PgBouncer"
    assert listening and not listening & pooled, (listening, pooled)
    assert "prepared statement" not in log and "Traceback" not in log, log[-3000:]
    # No session setting of ours stuck to a pooled server connection: hold all of
    # PgBouncer's server connections at once (one open transaction each) and ask each.
    direct = db.split_listen_url(pooled_url)[0]
    conns = [psycopg.connect(direct, prepare_threshold=None) for _ in range(4)]
    try:
        settings = {c.execute("SHOW synchronous_commit").fetchone()[0] for c in conns}
    finally:
        for c in conns:
            c.close()
    assert settings == {"on"}, settings


def test_listen_url_errors_name_the_problem() -> None:
    from swf_celery.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="listen_url is empty"):
        db.split_listen_url("postgresql://u@h/d?listen_url=")
    assert db.split_listen_url("postgresql://u@h:6432/d?sslmode=require&listen_url="
                               "postgresql%3A%2F%2Fu%40h%3A5432%2Fd") == (
        "postgresql://u@h:6432/d?sslmode=require", "postgresql://u@h:5432/d")
    assert "application_name=swf-listen" in db.named_dsn(
        "postgresql://u@h:6432/d?listen_url=postgresql%3A%2F%2Fu%40h%3A5432%2Fd", "listen")
    with pytest.raises(ConfigurationError, match="needs the database as a URL"):
        db.with_listen_url("host=h dbname=d", "postgresql://u@h/d")
