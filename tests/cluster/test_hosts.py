"""Workers on two hosts (network namespaces) against one PostgreSQL on the bridge."""

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
from tests.cluster.hosts import Cluster, cluster, host_ip, unavailable_reason
from tests.helpers import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.skipif(unavailable_reason() is not None,
                                 reason=str(unavailable_reason()))]


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[Cluster]:
    with cluster(2) as c:
        migrate.migrate(c.server.url())
        db.resolve(c.server.url()).close()
        for i in (1, 2):
            c.start_worker(i, "tests.cluster.app", queues=[cluster_app.QUEUE],
                           concurrency=4, env={"SWF_CLUSTER_URL": c.server.url(),
                                               "SWF_CLUSTER_VT": "5"})
        yield c


def test_tasks_complete_on_both_hosts(two_hosts: Cluster) -> None:
    url = two_hosts.server.url()
    client = Celery("cluster_client", broker=db.broker_url(url), backend=db.broker_url(url),
                    set_as_current=False)
    client.conf.task_default_queue = cluster_app.QUEUE
    try:
        results = [client.send_task("tests.cluster.app.nap", (0.1,)) for _ in range(40)]
        ran_on = [r.get(timeout=60) for r in results]
    finally:
        client.close()
    assert set(ran_on) == {"host1", "host2"}, ran_on
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, host(client_addr) FROM pg_stat_activity "
            "WHERE application_name LIKE 'swf-%@host_'").fetchall()
    # Each host's connections come from its own address and carry its name.
    for name, addr in rows:
        assert addr == host_ip(int(name[-1])), rows
    assert {name.split("@")[1] for name, _ in rows} == {"host1", "host2"}, rows


@pytest.mark.long
def test_a_host_cut_off_loses_and_duplicates_nothing(two_hosts: Cluster) -> None:
    """Host 2's link goes down mid-run: the messages it held reappear after the visibility
    timeout and complete on host 1, each effect recorded once; host 2 rejoins after."""
    url = two_hosts.server.url()
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("cluster_starts", "cluster_runs"):
            conn.execute(f"CREATE TABLE {table} (key text, host text)")
        conn.execute("CREATE TABLE cluster_effects (key text PRIMARY KEY, host text)")
    client = Celery("cluster_client", broker=db.broker_url(url), backend=db.broker_url(url),
                    set_as_current=False)
    client.conf.task_default_queue = cluster_app.QUEUE

    def count(query: str) -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            return int(conn.execute(query).fetchone()[0])  # type: ignore[index]

    try:
        run: dict[str, Any] = {}

        def workflow() -> None:
            try:
                run["output"] = swf.Executor.execute(cluster_app.Fan, {}, url,
                                                     timeout=120_000).output
            except Exception as exc:  # noqa: BLE001 - asserted below
                run["error"] = exc

        waiter = threading.Thread(target=workflow, daemon=True)
        waiter.start()
        results = [client.send_task("tests.cluster.app.effect", (2.0,)) for _ in range(24)]
        wait_until(lambda: count("SELECT count(*) FROM cluster_starts WHERE host = 'host2'"),
                   timeout=30, what="host2 running tasks")
        two_hosts.link(2, up=False)
        cut_off = count("SELECT count(DISTINCT key) FROM cluster_starts WHERE host = 'host2' "
                        "AND key NOT IN (SELECT key FROM cluster_effects)")
        wait_until(lambda: count("SELECT count(*) FROM cluster_effects") == 24, timeout=90,
                   what="every effect recorded while host2 is cut off")
        assert {r.get(timeout=30) for r in results} <= {"host1", "host2"}
        two_hosts.link(2, up=True)
        # Host 2 rejoins: its late reports change nothing, then it takes work again.
        wait_until(lambda: "host2" in {
            r.get(timeout=60) for r in [client.send_task("tests.cluster.app.nap", (0.2,))
                                        for _ in range(8)]}, timeout=120, interval=0.5,
                   what="host2 running tasks again")
        waiter.join(120)
    finally:
        two_hosts.link(2, up=True)
        client.close()
    effects = count("SELECT count(*) FROM cluster_effects")
    runs = count("SELECT count(*) FROM cluster_runs")
    print(f"cut off holding {cut_off}; effects {effects}/24, executions {runs}")
    assert cut_off > 0
    # The workflow completed, every step once (a step's late report was ignored).
    assert run.get("output") == {"total": 8}, run
    with psycopg.connect(url, autocommit=True) as conn:
        steps = conn.execute("SELECT status, count(*) FROM swf.step_states GROUP BY 1"
                             ).fetchall()
    assert steps == [("completed", 9)], steps
    assert effects == 24  # none lost, none twice (one row per task id)
    assert count("SELECT count(*) FROM cluster_effects WHERE host = 'host1'") >= cut_off
