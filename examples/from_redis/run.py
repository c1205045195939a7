"""Move a Celery app from Redis to PostgreSQL, queued tasks included, in one command.

``python -m examples.from_redis.run`` plays the migration of ``README.md`` end to end:

1. the app on Redis queues tasks while no worker runs (the backlog at switch time);
2. ``swf-celery migrate`` prepares PostgreSQL;
3. ``swf-celery drain-redis REDIS_URL shop`` moves the backlog into the swf broker;
4. a worker starts with the swf configuration and runs the moved tasks;
5. the results are read from the swf result backend.

``$REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) and ``$SWF_DATABASE_URL`` (default:
the embedded PostgreSQL) pick the servers.
"""

from __future__ import annotations

import os
import subprocess
import sys

from celery import Celery

from swf_celery import db
from swf_celery.testing import worker_process

APP = "examples.from_redis.tasks"
QUEUE = "shop"


def _cli(*args: str) -> None:
    print("$ swf-celery " + " ".join(args))
    proc = subprocess.run([sys.executable, "-m", "swf_celery.cli", *args], text=True,
                          capture_output=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode:
        raise SystemExit(proc.returncode)


def _app(config: str) -> Celery:
    app = Celery("shop", set_as_current=False)
    app.config_from_object(config)
    return app


def main() -> int:
    os.environ["SWF_DATABASE_URL"] = database = db.database_url(start_embedded=True).url
    from examples.from_redis import redis_config

    redis_url = redis_config.REDIS_URL

    print(f"1. the app on Redis ({redis_url}) queues tasks; no worker is running")
    before = _app("examples.from_redis.redis_config")
    ids = [before.send_task(f"{APP}.add_to_invoice", args=[n, 10.0 * n]).id
           for n in (1, 2, 3)]
    ids.append(before.send_task(f"{APP}.send_receipt", args=[3], priority=9).id)
    before.close()

    print("2. prepare PostgreSQL")
    _cli("migrate", "--database", database)
    print("3. move the queued messages (Redis workers are stopped)")
    _cli("drain-redis", redis_url, QUEUE, "--database", database)

    print(f"4. start the worker on swf://: celery -A {APP} worker -Q {QUEUE}")
    env = {"CELERY_CONFIG_MODULE": "examples.from_redis.swf_config"}
    after = _app("examples.from_redis.swf_config")
    with worker_process(APP, queues=[QUEUE], env=env, concurrency=2):
        print("5. results, from the swf result backend")
        results = [after.AsyncResult(task_id).get(timeout=60) for task_id in ids]
    after.close()
    for task_id, value in zip(ids, results, strict=True):
        print(f"  {task_id}  {value}")
    print(f"result: moved and ran {len(results)} tasks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
