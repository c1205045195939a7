"""A step report that cannot reach PostgreSQL is retried; if it never gets through, the
step's message is not acknowledged, so the attempt runs again once the server is back.

A `celery worker` subprocess of :mod:`tests.workflows.plain_app` (only ``import
swf_celery`` and plain tasks) on a private embedded server that the test stops.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import swf_celery as swf
from swf_celery.workflows.executor import Executor
from tests.helpers import read_log, wait_until, worker_process
from tests.workflows import plain_app, plain_flows

if TYPE_CHECKING:
    from tests.conftest import PrivateServer

pytestmark = pytest.mark.slow


def _starts(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines()
               if line.startswith("start")) if log.exists() else 0


@pytest.mark.long
def test_report_lost_to_an_outage_runs_the_attempt_again(private_server: PrivateServer,
                                                        tmp_path: Path) -> None:
    url = private_server.url
    log = tmp_path / "slow.log"
    flow = plain_flows.single("outage_report", plain_app.slow, queue="plain_outage",
                              max_attempts=1)
    with worker_process("tests.workflows.plain_app", queues=["plain_outage"],
                        hostname="outage@%h",
                        env={"SWF_DATABASE_URL": url, "SWF_TEST_REPORT_RETRY": "2"}) as proc:
        run_id = Executor.start(flow, {"log": str(log), "sleep": 3}, url)
        wait_until(lambda: _starts(log) == 1, 30, "step started", proc=proc)
        private_server.stop()
        try:
            # The step ends while the server is down; its report gives up after 2 s and
            # the message goes back instead of being acknowledged.
            wait_until(lambda: "cannot report step task" in read_log(proc), 60,
                       "report given up", proc=proc)
        finally:
            private_server.start()
        status = wait_until(lambda: swf.get_run_status(run_id, url).status == "completed",
                            120, "run completed after the outage", proc=proc)
        assert status
    assert _starts(log) == 2  # the attempt ran again: its message was not lost
    assert swf.get_run_status(run_id, url).output == {"only": "slept"}
