"""What the web console costs: serving a run page of a 1000-step DAG, the runs list, the
queues page and a /metrics scrape, in-process (Starlette's TestClient), on a fresh database.

``python -m benchmarks.bench_console`` ($SWF_DATABASE_URL, else the embedded server).
Not part of ``make bench``'s comparison tables: there is nothing to compare against; it
says whether the console stays cheap next to the engine it watches.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

import swf_celery as swf
from benchmarks import workflow_app
from benchmarks.bench_workflow import layered_workflow
from benchmarks.stats import summary_ms
from swf_celery import db
from swf_celery.ops import migrate

ROUNDS = 20
#: Runs stored before measuring the list and /metrics.
RUNS = 200


def _timed(client: Any, path: str) -> tuple[dict[str, float], int]:
    client.get(path)  # warm-up: plans, pool
    took = []
    size = 0
    for _ in range(ROUNDS):
        start = time.perf_counter()
        reply = client.get(path)
        took.append(time.perf_counter() - start)
        assert reply.status_code == 200, (path, reply.status_code)
        size = len(reply.content)
    return summary_ms(took), size


def _one_step() -> type:
    class OneStep:
        __workflow_slug__ = "bench.one_step"

        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return [("only", workflow_app.noop, {"queue": "bench_idle"})]

    return OneStep


def main() -> None:
    from starlette.testclient import TestClient

    from swf_celery.ui import create_app

    server = db.database_url(start_embedded=True).url
    name = f"bench_console_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = server.rsplit("/", 1)[0] + "/" + name
    try:
        migrate.migrate(url)
        # Nobody consumes this queue: the runs stay queued, the page shows 1000 steps.
        big = swf.Executor.start(layered_workflow(workflow_app.noop, queue="bench_idle"), {},
                                 url)
        small = _one_step()
        for _ in range(RUNS):
            swf.Executor.start(small, {}, url)
        with TestClient(create_app(url, allowed_hosts=["testserver"],
                                   require_token=False)) as client:
            rows = [(label, *_timed(client, path)) for label, path in (
                ("run page, 1000-step DAG", f"/runs/{big}"),
                (f"runs list ({RUNS + 1} runs, page of 50)", "/"),
                ("queues page", "/queues"),
                (f"/metrics ({RUNS + 1} runs)", "/metrics"))]
        print("| request | p50 ms | p95 ms | bytes |\n|---|---:|---:|---:|")
        for label, stats, size in rows:
            print(f"| {label} | {stats['p50']:.1f} | {stats['p95']:.1f} | {size:,} |")
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
