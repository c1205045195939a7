"""A workflow on a schedule: two distributed steps, the first as slow as its input says."""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task


@shared_task(name="beat_flows.fetch")
def fetch(inputs: dict[str, Any]) -> dict[str, Any]:
    """Sleep the run input's ``sleep`` seconds."""
    time.sleep(float(inputs["run"].get("sleep", 0)))
    return {"fetched": True}


@shared_task(name="beat_flows.report")
def report(inputs: dict[str, Any]) -> dict[str, Any]:
    """Report what fetch returned."""
    return {"reported": inputs["fetch"]["fetched"]}


class Nightly:
    """fetch -> report, both on the default queue."""

    __workflow_slug__ = "beat_nightly"

    @staticmethod
    def __workflow_steps__() -> list[tuple[str, Any, dict[str, Any]]]:
        return [("fetch", fetch, {}), ("report", report, {"depends_on": ["fetch"]})]
