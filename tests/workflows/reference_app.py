"""The reference's workflows in Python, as a user writes them: a Celery app and workflow
classes importing only what the README shows (``celery``, ``swf_celery``).

Used by tests/workflows/test_reference_forms.py, in-process and from other processes (the
CLI's retry, a driver that dies), which import it by name: ``tests.workflows.reference_app``.
Steps that must fail first count their attempts in the file ``$REF_FLAG_DIR/<name>``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery

import swf_celery as swf

app = Celery("reference_app",
             broker="swf://" + os.environ.get("SWF_DATABASE_URL", "localhost/unset")
             .split("://", 1)[-1])
app.conf.update(worker_hijack_root_logger=False, task_default_queue="reference")


def _attempt(name: str) -> int:
    """How many times the step ``name`` ran (this time included), counted on disk."""
    path = Path(os.environ.get("REF_FLAG_DIR", "/tmp")) / name
    with path.open("a") as f:
        f.write("x\n")
    return len(path.read_text().splitlines())


# -- the reference's __workflow_steps__ class, steps returning {:ok, value} -------------

class MyWorkflow:
    """``fetch -> process -> save`` as in the reference, its steps returning ("ok", value)."""

    @staticmethod
    def __workflow_steps__() -> list[Any]:
        return [
            ("fetch", MyWorkflow.fetch, {"depends_on": []}),
            ("process", MyWorkflow.process, {"depends_on": ["fetch"]}),
            ("save", MyWorkflow.save, {"depends_on": ["process"]}),
        ]

    @staticmethod
    def fetch(inputs: dict[str, Any]) -> Any:
        return ("ok", {"data": f"user {inputs['run']['user_id']}"})

    @staticmethod
    def process(inputs: dict[str, Any]) -> Any:
        return ("ok", {"result": inputs["fetch"]["data"].upper()})

    @staticmethod
    def save(inputs: dict[str, Any]) -> Any:
        return ("ok", {"saved": True, "what": inputs["process"]["result"]})


@app.task(name="reference.analyze")
def analyze(inputs: dict[str, Any]) -> Any:
    """A distributed step answering in the reference's form."""
    return ("ok", {"words": len(inputs["run"]["text"].split())})


@app.task(name="reference.refuse")
def refuse(inputs: dict[str, Any]) -> Any:
    return ("error", "the text is empty") if not inputs["run"]["text"] else ("ok", 1)


class Distributed:
    """The reference's distributed execution: steps on a queue of Celery workers."""

    @staticmethod
    def __workflow_steps__() -> list[Any]:
        return [
            ("analyze", analyze, {"depends_on": [], "execution": "distributed",
                                  "queue": "reference"}),
            ("check", refuse, {"depends_on": ["analyze"], "execution": "distributed",
                               "queue": "reference", "max_attempts": 1}),
        ]


class Refusing:
    """A local step answering ("error", reason) once, then ("ok", ...)."""

    @staticmethod
    def __workflow_steps__() -> list[Any]:
        return [("check", Refusing.check, {"depends_on": [], "max_attempts": 2,
                                          "retry_delay": 0})]

    @staticmethod
    def check(inputs: dict[str, Any]) -> Any:
        if _attempt(inputs["run"]["flag"]) == 1:
            return ("error", "not yet")
        return ("ok", "now")


# -- local runs another process can retry, resume or see fail ----------------------------

class FlakyLocal:
    """``prepare -> flaky``: ``flaky`` fails its first run (one attempt), then succeeds."""

    @staticmethod
    def __workflow_steps__() -> list[Any]:
        return [("prepare", FlakyLocal.prepare, {"depends_on": []}),
                ("flaky", FlakyLocal.flaky, {"depends_on": ["prepare"], "max_attempts": 1})]

    @staticmethod
    def prepare(inputs: dict[str, Any]) -> int:
        _attempt(inputs["run"]["flag"] + ".prepare")
        return 20

    @staticmethod
    def flaky(inputs: dict[str, Any]) -> int:
        if _attempt(inputs["run"]["flag"]) == 1:
            raise RuntimeError("first run fails")
        return inputs["prepare"] + 1


class LambdaLocal:
    """A local step that is a lambda: no process but its starter can run it."""

    @staticmethod
    def __workflow_steps__() -> list[Any]:
        return [("only", lambda inputs: 1 / 0, {"depends_on": [], "max_attempts": 1})]


class SlowLocal:
    """``slow -> done``: ``slow`` sleeps ``run["sleep"]`` seconds on its first attempt."""

    @staticmethod
    def __workflow_steps__() -> list[Any]:
        return [("slow", SlowLocal.slow, {"depends_on": []}),
                ("done", SlowLocal.done, {"depends_on": ["slow"]})]

    @staticmethod
    def slow(inputs: dict[str, Any]) -> str:
        if _attempt(inputs["run"]["flag"]) == 1:
            time.sleep(inputs["run"]["sleep"])
        return f"slow ran in {os.getpid()}"

    @staticmethod
    def done(inputs: dict[str, Any]) -> str:
        return f"done in {os.getpid()}"


def start_and_hang(url: str, flag: str, lease: float) -> None:
    """Start a SlowLocal run driven from this process, print its id, and hang (the test
    kills this process)."""
    run_id = swf.Executor.start(SlowLocal, {"flag": flag, "sleep": 300}, url, lease=lease)
    print(run_id, flush=True)
    time.sleep(300)


def sleepy_task(inputs: dict[str, Any]) -> str:
    """A goal task's step that takes a while."""
    time.sleep(float(inputs["run"]["input"]["sleep"]))
    return "slept"


def describe_task(inputs: dict[str, Any]) -> dict[str, Any]:
    """A goal's ``"*"`` step: which task am I?"""
    return inputs["task"]
