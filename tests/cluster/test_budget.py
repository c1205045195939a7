"""The connection budget of one worker host: a real ``celery -A app worker --pool=prefork``
runs tasks and a workflow while ``pg_stat_activity`` is sampled by ``application_name``."""

from __future__ import annotations

import threading
from collections import Counter

import psycopg
import pytest
from celery import Celery

import swf_celery as swf
from swf_celery import db
from swf_celery.errors import ConfigurationError
from tests.cluster import app as cluster_app
from tests.helpers import read_log, wait_until, worker_process

CONCURRENCY = 4
CLIENT = "budget-client"


def _with_param(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


def _worker_sessions(url: str) -> Counter[str]:
    """Sessions on ``url``'s database by role (``swf-results@host`` counts as results)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
    roles: Counter[str] = Counter()
    for (name,) in rows:
        if name != CLIENT:
            roles[name.split("@", 1)[0]] += 1
    return roles


def test_application_names_name_the_role_and_host():
    assert db.application_name("broker").startswith("swf-broker@")
    assert db.named_dsn("postgresql://u@h/d?application_name=mine", "listen").endswith(
        "application_name=mine")
    assert "application_name=swf-listen@" in db.named_dsn("postgresql://u@h/d", "listen")
    with pytest.raises(ConfigurationError, match="'cache' is not one of"):
        db.application_name("cache")


def test_the_roles_of_a_process_share_one_pool(db_url):
    steps = db.resolve(db_url, role="steps")
    results = db.resolve(db_url, role="results")
    with steps.connection() as conn:
        assert conn.execute("SHOW application_name").fetchone()[0] == steps.application_name
        backend = conn.info.backend_pid
    with results.connection() as conn:  # the same idle connection, relabelled
        assert conn.info.backend_pid == backend
        assert conn.execute("SHOW application_name").fetchone()[0] == \
            results.application_name
    named = db.resolve(_with_param(db_url, application_name="mine"), role="steps")
    with named.connection() as conn:
        assert conn.execute("SHOW application_name").fetchone()[0] == "mine"
    named.close()


def test_prefork_worker_stays_within_its_budget(db_url):
    """Broker <= 3 (consume, keep visibility, publish), LISTEN 1, each child <= 1 only
    while it stores a result or reports a step; idle children's connections close."""
    client_url = _with_param(db_url, application_name=CLIENT)
    client = Celery("budget_client", broker=db.broker_url(client_url),
                    backend=db.broker_url(client_url), set_as_current=False)
    client.conf.task_default_queue = cluster_app.QUEUE
    peak: Counter[str] = Counter()
    peak_total = peak_children = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_total, peak_children
        while not done.is_set():
            roles = _worker_sessions(db_url)
            peak_total = max(peak_total, sum(roles.values()))
            peak_children = max(peak_children, roles["swf-results"] + roles["swf-steps"])
            for role, n in roles.items():
                peak[role] = max(peak[role], n)
            done.wait(0.05)

    env = {"SWF_CLUSTER_URL": db_url, "SWF_POOL_MAX_IDLE": "1"}
    with worker_process("tests.cluster.app", queues=[cluster_app.QUEUE], env=env,
                        concurrency=CONCURRENCY, pool="prefork") as proc:
        idle = _worker_sessions(db_url)
        assert idle["swf-results"] + idle["swf-steps"] == 0, idle  # nothing stored yet
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            results = [client.send_task("tests.cluster.app.nap", (0.05,)) for _ in range(40)]
            run = swf.Executor.execute(cluster_app.Chain3, {"n": 1}, client_url,
                                       timeout=60_000)
            assert run.output == {"finish": 4}
            assert [r.get(timeout=60) for r in results] == [results[0].get()] * 40
        finally:
            done.set()
            sampler.join()
            client.close()
        assert set(peak) <= {"swf-broker", "swf-listen", "swf-results", "swf-steps"}, (
            peak, read_log(proc)[-2000:])
        assert peak["swf-results"] >= 1 and peak["swf-steps"] >= 1, peak
        assert peak["swf-broker"] <= 3 and peak["swf-listen"] <= 1, peak
        # One connection per child at most, labelled by what it last did.
        assert peak_children <= CONCURRENCY, (peak_children, peak)
        assert peak_total <= CONCURRENCY + 4, (peak_total, peak)
        # Idle pools shrink: the children's connections close after SWF_POOL_MAX_IDLE.
        wait_until(lambda: (lambda r: r["swf-results"] + r["swf-steps"] == 0)(
            _worker_sessions(db_url)), timeout=30, what="idle children's connections closed")
