"""After: the same settings on PostgreSQL. Two URLs change, one import is added, and beat
takes its schedule from PostgreSQL instead of RedBeat (one setting)."""

import swf_celery  # noqa: F401  registers the swf:// broker with kombu
from examples.from_redis.redis_config import *  # noqa: F403  everything else stays
from swf_celery import db

# In your app write your URL: "swf://user:password@db-host:5432/app". The example uses
# $SWF_DATABASE_URL, else the embedded PostgreSQL, so it runs anywhere.
_SWF = db.broker_url(db.database_url(start_embedded=True).url)

broker_url = _SWF
result_backend = _SWF

# celery beat: beat_schedule as it was, stored in PostgreSQL; run as many beats as you like.
beat_scheduler = "swf_celery.schedules:Scheduler"
