"""A Celery app on the swf:// broker whose workers clean up every second (retention tests).

Environment: ``SWF_TEST_BROKER`` (swf:// URL of the test database).
"""

from __future__ import annotations

import os

from celery import Celery

import swf_celery  # noqa: F401 - registers swf:// and the retention bootstep

app = Celery("retention_app", broker=os.environ["SWF_TEST_BROKER"])
app.conf.update(
    broker_connection_retry_on_startup=True,
    swf_retention_interval=float(os.environ.get("SWF_TEST_RETENTION", "3600")),
    swf_retention_runs="30d",
)
