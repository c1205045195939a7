"""A planner (an LLM) decides tasks and dependencies; the caller decides where and how
they run. A hostile planner's options are refused, naming the task and the field, and
nothing is stored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from swf_celery.errors import DecomposerError
from swf_celery.goals.decomposers import LLMDecomposer, PlannerPolicy
from swf_celery.goals.orchestrator import Orchestrator
from tests.helpers import sql_value


def _stored(url: str) -> tuple[int, int, int]:
    """(task graphs, flows, runs) in the database."""
    return (sql_value(url, "SELECT count(*) FROM swf.task_graphs"),
            sql_value(url, "SELECT count(*) FROM swf.flows"),
            sql_value(url, "SELECT count(*) FROM swf.runs"))


def _hostile(**fields: Any) -> LLMDecomposer:
    """A fake model whose answer was steered by a prompt injection."""
    tasks = [{"id": "fetch", "description": "Fetch"},
             {"id": "summarise", "description": "Summarise", "depends_on": ["fetch"],
              **fields}]
    return LLMDecomposer(lambda prompt: "Sure! ```json\n" + json.dumps(tasks) + "\n```")


def _ok(inputs: dict[str, Any]) -> str:
    return "done"


@pytest.mark.parametrize(("fields", "field"), [
    ({"execution": "local"}, "execution"),
    ({"queue": "admin_tasks"}, "queue"),
    ({"max_attempts": 1000}, "max_attempts"),
    ({"timeout": 86400}, "timeout"),
    ({"retry_delay": 0}, "retry_delay"),
])
def test_hostile_planner_options_are_refused_by_default(db_url: str, fields: dict[str, Any],
                                                        field: str) -> None:
    with pytest.raises(DecomposerError, match=f"task 'summarise': the planner set '{field}'"):
        Orchestrator.decompose_goal("summarise the news", _hostile(**fields), db_url)
    with pytest.raises(DecomposerError, match=f"'summarise'.*'{field}'"):
        Orchestrator.execute_goal("summarise the news", _hostile(**fields), {"*": _ok}, db_url,
                                  timeout=30_000)
    assert _stored(db_url) == (0, 0, 0)


def test_a_queue_outside_allowed_queues_is_refused(db_url: str) -> None:
    with pytest.raises(DecomposerError,
                       match=r"task 'summarise': queue 'admin_tasks' is not one of "
                             r"allowed_queues \['cpu_workers'\]"):
        Orchestrator.decompose_goal("x", _hostile(queue="admin_tasks"), db_url,
                                    allowed_queues=["cpu_workers"])
    assert _stored(db_url) == (0, 0, 0)


def test_a_nested_subtask_is_named_by_its_qualified_id(db_url: str) -> None:
    def planner(goal: str) -> list[dict[str, Any]]:
        return [{"id": "prepare", "subtasks": [
            {"id": "clean"}, {"id": "load", "execution": "local"}]}]

    with pytest.raises(DecomposerError, match="task 'prepare.load': the planner set "
                                              "'execution'"):
        Orchestrator.decompose_goal("x", planner, db_url)
    assert _stored(db_url) == (0, 0, 0)


def test_what_the_caller_allows_reaches_the_flow(db_url: str) -> None:
    graph = Orchestrator.decompose_goal(
        "x", _hostile(queue="cpu_workers", max_attempts=2), db_url,
        allowed_options=["max_attempts"], allowed_queues=["cpu_workers"])
    by_id = {t["id"]: t for t in graph["flat_tasks"]}
    assert by_id["summarise"]["queue"] == "cpu_workers"
    assert by_id["summarise"]["max_attempts"] == 2


def test_a_stored_graph_is_checked_again_before_it_runs(db_url: str) -> None:
    graph = Orchestrator.decompose_goal("x", _hostile(execution="local"), db_url,
                                        allowed_options=["execution"])
    with pytest.raises(DecomposerError, match="task 'summarise': the planner set 'execution'"):
        Orchestrator.execute_goal(graph["id"], None, {"*": _ok}, db_url, timeout=30_000)
    assert _stored(db_url) == (1, 0, 0)  # the graph only: no flow, no run


@pytest.mark.parametrize(("options", "queues", "fragment"), [
    (["queue"], None, "also give allowed_queues"),
    (["shell"], None, "unknown option"),
    ("queue", None, "collection of names"),
])
def test_bad_policies_are_clear_errors(options: Any, queues: Any, fragment: str) -> None:
    with pytest.raises(DecomposerError, match=fragment):
        PlannerPolicy.of(options, queues)


def test_malformed_option_values_are_refused() -> None:
    with pytest.raises(DecomposerError, match="execution must be 'local' or 'distributed'"):
        PlannerPolicy.of(["execution"]).check(
            LLMDecomposer(lambda p: '[{"id": "a", "execution": "remote"}]')("g"))
