"""Flow control at delivery with real worker processes: a cluster-wide rate limit (Celery's
``rate_limit``), a concurrency key with turns between keys, and a held key (a 429)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from celery import Celery

import swf_celery as swf
from tests.helpers import sql, sql_value, wait_until, worker_process

pytestmark = [pytest.mark.db, pytest.mark.slow]

APP = "tests.limits.limits_app"


def _workers(broker: str, n: int, concurrency: int) -> Any:
    from contextlib import ExitStack

    stack = ExitStack()
    for i in range(n):
        stack.enter_context(worker_process(APP, concurrency=concurrency, hostname=f"w{i}@%h",
                                           env={"SWF_TEST_BROKER": broker}))
    return stack


def _done(url: str, like: str) -> list[dt.datetime]:
    return [r[0] for r in sql(url, "SELECT at FROM task_runs WHERE phase = 'done' AND "
                                   "tag LIKE %s ORDER BY at", (like,))]


def test_a_rate_limit_holds_across_workers_and_other_keys_flow(client: Celery, broker: str,
                                                              db_url: str) -> None:
    for i in range(60):
        client.tasks["limited"].delay(f"lim-{i}")
    for i in range(40):
        client.tasks["record"].delay(f"free-{i}")
    with _workers(broker, 2, 3):
        wait_until(lambda: len(_done(db_url, "lim-%")) == 60, timeout=40, what="60 limited")
    limited, free = _done(db_url, "lim-%"), _done(db_url, "free-%")
    assert len(free) == 40
    # 20/s with a burst of 20: 60 take at least 2 s; in any window of w seconds at most
    # 20 * w + 20 (+1 for the edges) ran, whatever the number of worker processes (6).
    assert (limited[-1] - limited[0]).total_seconds() >= 1.8
    for i, start in enumerate(limited):
        for j in range(i, len(limited)):
            window = (limited[j] - start).total_seconds()
            assert j - i + 1 <= 20 * window + 21 + 1, (i, j, window)
    # The unlimited messages were not held back behind the limited ones.
    assert free[-1] < limited[-1]


def test_a_concurrency_key_caps_running_tasks_and_keys_take_turns(client: Celery,
                                                                 broker: str,
                                                                 db_url: str) -> None:
    for i in range(24):
        client.tasks["per_tenant"].delay("big", f"big-{i}", 0.2)
    for t in range(3):
        for i in range(2):
            client.tasks["per_tenant"].delay(f"small{t}", f"small{t}-{i}", 0.2)
    with _workers(broker, 2, 4):
        wait_until(lambda: sql_value(db_url, "SELECT count(*) FROM task_runs WHERE "
                                             "phase = 'done'") == 30, timeout=60,
                   what="30 tasks done")
    rows = sql(db_url, "SELECT tag, phase, at FROM task_runs ORDER BY at, id")
    running: dict[str, int] = {}
    for tag, phase, _at in rows:
        key = tag.split("-")[0]
        running[key] = running.get(key, 0) + (1 if phase == "start" else -1)
        assert running[key] <= 2, (key, tag)
    # Turns: the small tenants finished long before the big backlog did.
    small_done = max(at for tag, phase, at in rows if tag.startswith("small") and
                     phase == "done")
    big_done = [at for tag, phase, at in rows if tag.startswith("big") and phase == "done"]
    assert sum(1 for at in big_done if at <= small_done) <= 10


def test_a_held_key_waits_until_its_hold_ends(client: Celery, broker: str,
                                             db_url: str) -> None:
    until = swf.hold_key("tenant:held", until=dt.timedelta(seconds=3), repo=db_url)
    assert [k.key for k in swf.held_keys(db_url)] == ["tenant:held"]
    client.tasks["per_tenant"].delay("held", "held-1")
    client.tasks["per_tenant"].delay("other", "other-1")
    client.tasks["calls_api"].delay("api-1")  # holds its own key for 2 s on its 429
    with _workers(broker, 1, 2):
        wait_until(lambda: _done(db_url, "api-1"), timeout=30, what="the api task")
        wait_until(lambda: _done(db_url, "held-1"), timeout=30, what="the held task")
    done = {r[0]: r[1] for r in sql(db_url, "SELECT tag, at FROM task_runs "
                                            "WHERE phase = 'done'")}
    assert done["held-1"] >= until
    assert done["other-1"] < until
    got_429 = sql_value(db_url, "SELECT at FROM task_runs WHERE phase = '429'")
    assert (done["api-1"] - got_429).total_seconds() >= 1.9
    assert swf.release_key("tenant:held", db_url) is False  # over already
