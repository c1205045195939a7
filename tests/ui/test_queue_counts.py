"""What ``/queues`` and ``/metrics`` read stays bounded however long a queue is: each count
reads at most ``COUNT_LIMIT`` rows through an index (never the whole table), and counts over
the limit are estimates from PostgreSQL's statistics or lower bounds, marked as such."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from swf_celery.db import resolve
from swf_celery.ui import queues
from swf_celery.ui.queues import AT_LEAST, ESTIMATE
from tests.helpers import pg_url, sql, sql_value, wait_until

LIMIT = 50
READY, DELAYED, HELD = 4000, 7, 3


def _live(db_url: str, pgmq: str) -> int:
    return int(sql(db_url, "SELECT n_live_tup FROM pg_stat_all_tables WHERE relid = "
                           "%s::regclass", (f"pgmq.q_{pgmq}",))[0][0])


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


@pytest.fixture
def limited(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(queues, "COUNT_LIMIT", LIMIT)
    return LIMIT


@pytest.mark.slow
def test_long_queues_are_counted_through_the_index_up_to_the_limit_then_estimated(
        db_url: str, limited: int) -> None:
    pgmq = sql_value(db_url, "SELECT pgmq_name FROM swf.queue_ensure('big.jobs', 0)")
    table = psycopg.sql.Identifier("pgmq", f"q_{pgmq}")
    with psycopg.connect(pg_url(db_url), autocommit=True) as conn:
        for count, vt, read_ct in ((READY, "-1 minute", 0), (DELAYED, "1 hour", 0),
                                   (HELD, "1 hour", 1)):
            conn.execute(psycopg.sql.SQL(
                "INSERT INTO {} (vt, read_ct, message) SELECT now() + %s::interval, %s, "
                "'{{}}'::jsonb FROM generate_series(1, %s)").format(table), (vt, read_ct, count))
    # The inserting session has ended: its counts reach the statistics (when, is the
    # server's business); then ANALYZE gives the planner the table as it is.
    wait_until(lambda: _live(db_url, pgmq) == READY + DELAYED + HELD,
               what="the inserts counted in the statistics")
    sql(db_url, psycopg.sql.SQL("ANALYZE {}").format(table))
    sql(db_url, "INSERT INTO swf.dead_letters (queue, msg_id, read_ct, enqueued_at, reason, "
                "message) SELECT 'big.jobs', i, 1, now(), 'rejected', '{}' "
                "FROM generate_series(1, %s) i", (LIMIT + 5,))

    # The plan: every read of the queue's table goes through an index and stops at the limit.
    with psycopg.connect(pg_url(db_url)) as conn:
        [[[explained]]] = conn.execute(
            psycopg.sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(
                queues.durable_statement([pgmq])), {"limit": LIMIT}).fetchall()
    scans = [n for n in _plan_nodes(explained["Plan"]) if n.get("Relation Name") == f"q_{pgmq}"]
    assert len(scans) == 2
    assert all(n["Node Type"] in ("Index Scan", "Index Only Scan") for n in scans), scans
    assert all(n["Actual Rows"] <= LIMIT for n in scans)

    [stats] = queues.queue_stats(resolve(db_url), ["big.jobs"])
    # ready: the table's live rows (statistics) less the not-ready rows read; the rest exact.
    assert (stats.ready, stats.delayed, stats.held) == (READY, DELAYED, HELD)
    assert stats.approximate == {"ready": ESTIMATE, "oldest_age": AT_LEAST,
                                 "dead_letters": AT_LEAST}
    assert stats.dead_letters == LIMIT and stats.mark("depth") == ESTIMATE


@pytest.mark.slow
def test_the_page_and_metrics_say_which_counts_are_estimates(db_url: str, limited: int) -> None:
    from starlette.testclient import TestClient

    from swf_celery.ui import create_app

    sql_value(db_url, "SELECT swf.queue_ensure('short.jobs', 0)")
    sql_value(db_url, "SELECT swf.queue_ensure('chatty.reply.celery.pidbox', 60000)")
    sql(db_url, "INSERT INTO swf.transient_messages (queue, message) SELECT "
                "'chatty.reply.celery.pidbox', '{}' FROM generate_series(1, %s)", (LIMIT + 1,))
    app = create_app(db_url, allowed_hosts=["testserver"], require_token=False)
    with TestClient(app) as tc:
        page = tc.get("/queues", params={"all": "1"}).text
        metrics = tc.get("/metrics").text
    row = re.search(r'>chatty.reply.celery.pidbox</a></td>(.*?)</tr>', page).group(1)
    assert row.count(f'title="at least">{AT_LEAST}</abbr>{LIMIT}') == 2  # depth, ready
    assert "Counts over 50 are estimates" in page
    short = re.search(r'>short.jobs</a></td>(.*?)</tr>', page).group(1)
    assert "abbr" not in short
    assert 'swf_queue_estimated{queue="chatty.reply.celery.pidbox"} 1.0' in metrics
    assert 'swf_queue_estimated{queue="short.jobs"} 0.0' in metrics


def test_an_estimate_splits_what_was_not_read_as_the_rows_read_do(limited: int) -> None:
    # Not-ready rows over the limit: 40 delayed and 10 held of the 50 read; 1000 live rows.
    waiting = queues._durable("q", 20, 40, 10, 1.0, 50, 1000, 0)
    assert (waiting.ready, waiting.delayed, waiting.held) == (20, 784, 196)
    assert waiting.approximate == {"delayed": ESTIMATE, "held": ESTIMATE}
    # Both over: ready is estimated, the not-ready rows read are a lower bound.
    both = queues._durable("q", 50, 30, 20, 1.0, 50, 1000, 0)
    assert (both.ready, both.delayed, both.held) == (950, 30, 20)
    assert both.approximate == {"ready": ESTIMATE, "oldest_age": AT_LEAST,
                                "delayed": AT_LEAST, "held": AT_LEAST}
    # Statistics behind (an empty table's): never less than what was read.
    behind = queues._durable("q", 50, 0, 0, 1.0, 0, 0, 0)
    assert behind.ready == 50 and behind.mark("depth") == ESTIMATE
