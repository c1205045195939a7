"""Workers on two hosts (network namespaces) against one PostgreSQL on the bridge."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from celery import Celery

from swf_celery import db
from swf_celery.ops import migrate
from tests.cluster import app as cluster_app
from tests.cluster.hosts import Cluster, cluster, host_ip, unavailable_reason

pytestmark = [pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.skipif(unavailable_reason() is not None,
                                 reason=str(unavailable_reason()))]


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[Cluster]:
    with cluster(2, port=55433) as c:
        migrate.migrate(c.server.url())
        db.resolve(c.server.url()).close()
        for i in (1, 2):
            c.start_worker(i, "tests.cluster.app", queues=[cluster_app.QUEUE],
                           concurrency=4, env={"SWF_CLUSTER_URL": c.server.url()})
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
