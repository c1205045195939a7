"""``revoke(task_id, terminate=True)`` on a real prefork worker over swf://: the running task
is killed and the worker keeps serving, cycle after cycle."""

from __future__ import annotations

import pytest
from celery import Celery

from tests.helpers import (
    queue_size,
    task_runs,
    wait_until,
    worker_process,
)

pytestmark = pytest.mark.slow
APP = "tests.transport.broker_app"


# Three cycles in `make test`; fifty, the fault cycle, in `make test-long`.
@pytest.mark.parametrize("cycles", [3, pytest.param(50, marks=pytest.mark.long)])
def test_terminate_kills_the_task_and_the_worker_keeps_serving(
        broker: str, client: Celery, cycles: int) -> None:
    with worker_process(APP, env={"SWF_TEST_BROKER": broker}, hostname="term@%h") as proc:
        for i in range(cycles):
            result = client.send_task("slow", args=[f"long{i}", 600])
            wait_until(lambda i=i: (f"long{i}", "start") in task_runs(broker),
                       what=f"cycle {i}: task started", proc=proc)
            client.control.revoke(result.id, terminate=True)
            client.send_task("record", args=[f"after{i}"])
            wait_until(lambda i=i: (f"after{i}", "done") in task_runs(broker),
                       what=f"cycle {i}: next task served", proc=proc)
        stats = wait_until(lambda: client.control.inspect(timeout=5).stats(),
                           what="stats reply", proc=proc)
        pool = next(iter(stats.values()))["pool"]
        assert len(pool["processes"]) == 2
        wait_until(lambda: queue_size(broker, "celery") == 0, what="queue empty", proc=proc)
        active = client.control.inspect(timeout=5).active() or {}
        assert all(not tasks for tasks in active.values()), active
    runs = task_runs(broker)
    assert not [tag for tag, phase in runs if tag.startswith("long") and phase == "done"]
    assert sum(1 for tag, phase in runs if tag.startswith("long") and phase == "start") == cycles
