"""A primary failover: a streaming standby (``pg_basebackup``) is promoted while tasks and
a workflow run on two hosts given a multi-host URL with ``target_session_attrs``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery

import swf_celery as swf
from swf_celery import db
from swf_celery.ops import migrate
from tests.cluster import app as cluster_app
from tests.cluster.hosts import BRIDGE_IP, Cluster, cluster, unavailable_reason
from tests.helpers import read_log, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.long,
              pytest.mark.skipif(unavailable_reason() is not None,
                                 reason=str(unavailable_reason()))]

TASKS = 30


@pytest.fixture
def replicated(request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, str]]:
    durable = getattr(request, "param", False)
    with cluster(2) as c:
        url = c.server.url()
        migrate.migrate(url)
        db.resolve(url).close()
        with psycopg.connect(url, autocommit=True) as conn:
            for table in ("cluster_starts", "cluster_runs"):
                conn.execute(f"CREATE TABLE {table} (key text, host text)")
            conn.execute("CREATE TABLE cluster_effects (key text PRIMARY KEY, host text)")
        standby = c.add_standby()
        if durable:  # from now on every commit waits for the standby
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                conn.execute("SELECT pg_reload_conf()")
        # Both servers in the query (libpq's host/port lists): Celery parses the netloc.
        primary = c.server.port
        both = (f"postgresql://postgres:{c.server.password}@{BRIDGE_IP}:{primary}/swf"
                f"?host={BRIDGE_IP},{BRIDGE_IP}&port={primary},{standby.port}"
                "&target_session_attrs=read-write")
        for i in (1, 2):
            c.start_worker(i, "tests.cluster.app", queues=[cluster_app.QUEUE], concurrency=4,
                           env={"SWF_CLUSTER_URL": both, "SWF_CLUSTER_VT": "5",
                                "SWF_CLUSTER_DURABLE": "1" if durable else "0"})
        yield c, both


def test_workers_and_waiters_follow_a_promoted_standby(replicated: tuple[Cluster, str]
                                                       ) -> None:
    c, both = replicated
    client = Celery("failover_client", broker=db.broker_url(both),
                    backend=db.broker_url(both), set_as_current=False)
    client.conf.task_default_queue = cluster_app.QUEUE
    run: dict[str, Any] = {}

    def workflow() -> None:
        try:
            run["output"] = swf.Executor.execute(cluster_app.Chain3, {"n": 1}, both,
                                                 timeout=120_000).output
        except Exception as exc:  # noqa: BLE001 - asserted below
            run["error"] = exc

    def count(query: str) -> int:
        with psycopg.connect(both, autocommit=True) as conn:
            return int(conn.execute(query).fetchone()[0])  # type: ignore[index]

    try:
        results = [client.send_task("tests.cluster.app.effect", (1.0,)) for _ in range(TASKS)]
        wait_until(lambda: count("SELECT count(*) FROM cluster_effects") >= 4, timeout=60,
                   what="tasks running before the failover")
        waiter = threading.Thread(target=workflow, daemon=True)
        waiter.start()
        c.server.crash()
        c.standbys[0].promote()
        hosts = [r.get(timeout=180) for r in results]
        waiter.join(180)
    finally:
        client.close()
    logs = "\n".join(read_log(p)[-1500:] for p in c.workers.values())
    assert run.get("output") == {"finish": 4}, (run, logs)
    assert set(hosts) <= {"host1", "host2"}
    effects = count("SELECT count(*) FROM cluster_effects")
    print(f"effects after failover: {effects}/{TASKS}; executions "
          f"{count('SELECT count(*) FROM cluster_runs')}")
    assert effects == TASKS  # none lost, none twice (one row per task id)
    # The workers took new work on the new primary too.
    after = Celery("failover_after", broker=db.broker_url(both), backend=db.broker_url(both),
                   set_as_current=False)
    after.conf.task_default_queue = cluster_app.QUEUE
    try:
        assert after.send_task("tests.cluster.app.nap", (0.0,)).get(timeout=60) in {
            "host1", "host2"}
    finally:
        after.close()


@pytest.mark.parametrize("replicated", [True], indirect=True, ids=["synchronous-standby"])
def test_nothing_acknowledged_is_lost_with_a_synchronous_standby(
        replicated: tuple[Cluster, str]) -> None:
    """Publishes keep coming while the primary dies: with ``durable_publish=True``, a
    synchronous standby and ``synchronous_commit=on``, every publish that returned has
    its effect recorded after the promotion."""
    c, both = replicated
    client = Celery("failover_durable", broker=db.broker_url(both),
                    backend=db.broker_url(both), set_as_current=False)
    client.conf.update(task_default_queue=cluster_app.QUEUE,
                       broker_transport_options={"durable_publish": True})
    acknowledged: list[str] = []
    failed: list[str] = []

    def publish() -> None:
        for i in range(60):
            task_id = f"durable-{i}"
            try:
                client.send_task("tests.cluster.app.effect", (0.2,), task_id=task_id)
                acknowledged.append(task_id)
            except Exception:  # noqa: BLE001 - not acknowledged: may or may not exist
                failed.append(task_id)

    def effects() -> set[str]:
        with psycopg.connect(both, autocommit=True) as conn:
            return {k for k, in conn.execute("SELECT key FROM cluster_effects").fetchall()}

    try:
        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        wait_until(lambda: len(acknowledged) >= 10, timeout=60, what="publishing")
        c.server.crash()
        c.standbys[0].promote()
        publisher.join(180)
        wait_until(lambda: set(acknowledged) <= effects(), timeout=180, interval=0.5,
                   what="every acknowledged task's effect")
    finally:
        client.close()
    lost = set(acknowledged) - effects()
    print(f"acknowledged {len(acknowledged)}, failed {len(failed)}, lost {len(lost)}")
    assert not lost
