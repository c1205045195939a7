"""Conditional, waiting and sleeping steps as a user writes them (imports: ``celery`` and
``swf_celery`` only), for tests/workflows/test_conditions_signals.py and its worker
processes (``celery -A tests.workflows.conditional_app worker -Q conditional``).
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from celery import Celery

import swf_celery as swf

app = Celery("conditional_app",
             broker="swf://" + os.environ.get("SWF_DATABASE_URL", "localhost/unset")
             .split("://", 1)[-1])
app.conf.update(worker_hijack_root_logger=False, task_default_queue="conditional")


def is_large(inputs: dict[str, Any]) -> bool:
    return inputs["measure"]["size"] > 10


class Branching:
    """``measure -> (big | small) -> report``: exactly one branch runs; ``report`` runs on
    partial inputs, ``audit`` (after ``big`` only) is skipped with it."""

    @swf.step()
    def measure(inputs: dict[str, Any]) -> dict[str, int]:  # noqa: N805 - a step, not a method
        return {"size": inputs["run"]["size"]}

    @swf.step(depends_on=["measure"], run_if=is_large)
    def big(inputs: dict[str, Any]) -> str:  # noqa: N805
        return "split into parts"

    @swf.step(depends_on=["measure"], skip_if=is_large)
    def small(inputs: dict[str, Any]) -> str:  # noqa: N805
        return "kept whole"

    @swf.step(depends_on=["big"])
    def audit(inputs: dict[str, Any]) -> str:  # noqa: N805
        return "audited " + inputs["big"]

    @swf.step(depends_on=["big", "small"], run_on_skip=True)
    def report(inputs: dict[str, Any]) -> dict[str, Any]:  # noqa: N805
        return {"big": inputs["big"], "small": inputs["small"]}


def always_fails(inputs: dict[str, Any]) -> None:
    raise RuntimeError("the optional enrichment is down")


def enriched(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"enrichment": inputs["enrich"], "base": inputs["run"]["n"]}


class Optional:
    """``enrich`` may fail: after its attempts it is skipped, and ``use`` runs without it."""

    @staticmethod
    def __workflow_steps__() -> list[Any]:
        return [("enrich", always_fails, {"depends_on": [], "max_attempts": 2,
                                          "retry_delay": 0, "on_exhausted": "skip"}),
                ("use", enriched, {"depends_on": ["enrich"], "run_on_skip": True})]


@swf.step(queue="conditional", run_if=lambda inputs: inputs["run"]["go"])
@app.task(name="conditional.shout")
def shout(inputs: dict[str, Any]) -> str:
    return inputs["run"]["word"].upper()


class OnWorkers:
    """A distributed step whose predicate (a lambda given with @step) runs on the worker."""

    shout = shout


@app.task(name="conditional.publish")
def publish(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"published": inputs["draft"], "approved_by": inputs["approved"]["by"]}


@app.task(name="conditional.draft")
def draft(inputs: dict[str, Any]) -> str:
    return f"draft of {inputs['run']['title']}"


class Approval:
    """``draft -> publish``: ``publish`` waits for the signal ``approved`` (both on workers)."""

    @staticmethod
    def __workflow_steps__() -> list[Any]:
        return [("draft", draft, {"depends_on": [], "queue": "conditional"}),
                ("publish", publish, {"depends_on": ["draft"], "queue": "conditional",
                                      "wait_for": "approved"})]


def local_draft(inputs: dict[str, Any]) -> str:
    return f"draft of {inputs['run']['title']}"


def local_publish(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"published": inputs["draft"], "approved_by": inputs["approved"]["by"]}


class LocalApproval:
    """The same, run in the caller's process."""

    @staticmethod
    def __workflow_steps__() -> list[Any]:
        return [("draft", local_draft, {"depends_on": []}),
                ("publish", local_publish, {"depends_on": ["draft"],
                                            "wait_for": "approved"})]


def stamp(inputs: dict[str, Any]) -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def sleeper(seconds: float, *, distributed: bool = False) -> type:
    """``first -> later``: ``later`` waits ``seconds`` after ``first`` finished."""
    later: Any = stamp_task if distributed else stamp
    options: dict[str, Any] = {"queue": "conditional"} if distributed else {}

    class Sleeper:
        __workflow_slug__ = f"tests.sleeper.{'d' if distributed else 'l'}{seconds}"

        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return [("first", later, {"depends_on": [], **options}),
                    ("later", later, {"depends_on": ["first"], "wait_until": seconds,
                                      **options})]

    return Sleeper


@app.task(name="conditional.stamp")
def stamp_task(inputs: dict[str, Any]) -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def load(inputs: dict[str, Any]) -> list[int]:
    _count("load")
    return list(range(inputs["run"]["n"]))


def square(inputs: dict[str, Any]) -> int:
    _count("square")
    return inputs["item"] ** 2


def train(inputs: dict[str, Any]) -> dict[str, Any]:
    _count("train")
    return {"total": sum(inputs["square"]) * inputs["run"].get("scale", 1)}


def evaluate(inputs: dict[str, Any]) -> str:
    _count("evaluate")
    return f"score {inputs['train']['total']}"


def _count(step: str) -> None:
    path = os.path.join(os.environ.get("REF_FLAG_DIR", "/tmp"), "calls." + step)
    with open(path, "a") as f:
        f.write("x\n")


class Training:
    """``load -> square (map) -> train -> evaluate``, counting the calls of each step."""

    @staticmethod
    def __workflow_steps__() -> list[Any]:
        return [("load", load, {"depends_on": []}),
                ("square", square, {"depends_on": ["load"], "map_over": "load"}),
                ("train", train, {"depends_on": ["square"]}),
                ("evaluate", evaluate, {"depends_on": ["train"]})]
