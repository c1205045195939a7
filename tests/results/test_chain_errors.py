"""An error in a chain reaches the results of a group chained after it (Celery#6437, where
Celery on Redis waits forever), with a real in-process worker on the swf backend."""

from __future__ import annotations

import pytest
from celery import group

from tests.helpers import wait_until


def test_error_before_a_group_reaches_the_group_results(celery_app, worker):
    t = celery_app.tasks
    sig = t["t.add"].s(1, 1) | t["t.fail"].s() | group(t["t.add"].s(1), t["t.add"].s(2))
    result = sig.delay()
    with pytest.raises(ValueError, match="2"):
        result.get(timeout=30)
    # get() raises at the first failed child; the second is stored right after it.
    wait_until(lambda: [r.state for r in result.results] == ["FAILURE", "FAILURE"],
               what="both group results failed")


def test_error_before_a_group_of_chains_reaches_their_last_tasks(celery_app, worker):
    t = celery_app.tasks
    tail = group(t["t.add"].s(1) | t["t.add"].s(2), t["t.add"].s(3))
    result = (t["t.fail"].si("early") | tail).delay()
    with pytest.raises(ValueError, match="early"):
        result.get(timeout=30)
