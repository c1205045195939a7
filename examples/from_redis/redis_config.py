"""Before: the app's Celery settings on Redis."""

import os

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

broker_url = REDIS_URL
result_backend = REDIS_URL
task_default_queue = "shop"
task_acks_late = True
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

# celery beat on RedBeat (pip install celery-redbeat): the schedule and its lock in Redis.
beat_scheduler = "redbeat.RedBeatScheduler"
redbeat_redis_url = REDIS_URL
beat_schedule = {
    "receipts-every-10-minutes": {"task": "examples.from_redis.tasks.send_receipt",
                                  "schedule": 600.0, "args": [0]},
}
