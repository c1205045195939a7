"""Goals -> validated, persisted task graphs -> dynamic flows -> runs (local steps)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from swf_celery.errors import (
    CycleError,
    DecomposerError,
    DuplicateStepError,
    GoalError,
    StepFunctionError,
    UnknownDependencyError,
    WorkflowDefinitionError,
    WorkflowFailed,
)
from swf_celery.goals.decomposers import EXAMPLE_RULES, LLMDecomposer, RuleDecomposer
from swf_celery.goals.orchestrator import Orchestrator, WorkflowComposer
from tests.helpers import sql_value


def _graph_count(url: str) -> int:
    return sql_value(url, "SELECT count(*) FROM swf.task_graphs")


def _record(inputs: dict[str, Any]) -> dict[str, Any]:
    """A step that reports which dependencies it saw."""
    return {"saw": sorted(k for k in inputs if k not in ("run", "task")),
            "goal": inputs["run"]["goal"]}


def test_decompose_persists_hierarchical_graph(db_url: str) -> None:
    graph = Orchestrator.decompose_goal("Train a churn model", RuleDecomposer(EXAMPLE_RULES),
                                        db_url)
    assert set(graph) >= {"id", "goal", "tasks", "decomposed_at"}
    flat = {t["id"]: t["depends_on"] for t in graph["flat_tasks"]}
    assert flat["prepare.clean"] == ["fetch"]               # inherits the parent's deps
    assert flat["prepare.features"] == ["fetch", "prepare.clean"]
    assert flat["train"] == ["prepare.clean", "prepare.features"]  # waits for all leaves
    stored = Orchestrator.get_task_graph(graph["id"], db_url)
    assert stored["tasks"] == graph["tasks"] and stored["status"] == "decomposed"
    assert [g["id"] for g in Orchestrator.list_task_graphs(db_url)] == [graph["id"]]


def test_execute_goal_runs_every_leaf_in_dependency_order(db_url: str) -> None:
    result = Orchestrator.execute_goal("Train a fraud model", RuleDecomposer(EXAMPLE_RULES),
                                       {"*": _record}, db_url, timeout=60_000)
    assert result.output == {"report": {"saw": ["evaluate"], "goal": "Train a fraud model"}}
    graph = Orchestrator.get_task_graph(result.graph_id, db_url)
    assert graph["status"] == "completed" and graph["last_run_id"] == result.run_id


def test_execute_goal_on_a_graph_id_does_not_decompose_again(db_url: str) -> None:
    calls: list[str] = []

    def decomposer(goal: str) -> list[dict[str, Any]]:
        calls.append(goal)
        return [{"id": "a"}, {"id": "b", "depends_on": ["a"]}]

    graph = Orchestrator.decompose_goal("twice", decomposer, db_url)
    first = Orchestrator.execute_goal(graph["id"], decomposer, {"*": _record}, db_url)
    second = Orchestrator.execute_goal(graph, None, {"*": _record}, db_url)
    assert calls == ["twice"]
    assert first.run_id != second.run_id and first.output == second.output
    assert _graph_count(db_url) == 1


def test_llm_decomposer_end_to_end_with_a_fake_model(db_url: str) -> None:
    answer = "Plan:\n```json\n" + json.dumps([
        {"id": "search", "description": "Search", "depends_on": []},
        {"id": "summarise", "description": "Summarise", "depends_on": ["search"]},
    ]) + "\n```"
    result = WorkflowComposer.compose_from_goal(
        "summarise the news", LLMDecomposer(lambda prompt: answer),
        {"search": lambda i: ["a", "b"], "summarise": lambda i: len(i["search"])}, db_url)
    assert result.output == {"summarise": 2}


@pytest.mark.parametrize(
    ("tasks", "error", "fragment"),
    [
        ([{"id": "a"}, {"id": "a"}], DuplicateStepError, "'a'"),
        ([{"id": "a", "depends_on": ["ghost"]}], UnknownDependencyError, "ghost"),
        ([{"id": "r"}, {"id": "a", "depends_on": ["r", "b"]}, {"id": "b", "depends_on": ["a"]}],
         CycleError, "a -> b -> a|b -> a -> b"),
        ([], GoalError, "empty task list"),
        ([{"id": "l1", "subtasks": [{"id": "l2", "subtasks": [{"id": "l3"}]}]}],
         WorkflowDefinitionError, "deeper than 2"),
        ("garbage", DecomposerError, "returned str"),
    ],
)
def test_invalid_graphs_are_refused_and_not_persisted(db_url: str, tasks: Any,
                                                      error: type[Exception],
                                                      fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        Orchestrator.decompose_goal("bad", lambda g: tasks, db_url, max_depth=2)
    assert _graph_count(db_url) == 0


def test_missing_step_function_is_named_before_running(db_url: str) -> None:
    graph = Orchestrator.decompose_goal("g", lambda g: [{"id": "a"}, {"id": "b"}], db_url)
    with pytest.raises(StepFunctionError, match=r"\['b'\]"):
        Orchestrator.execute_goal(graph["id"], None, {"a": _record}, db_url)
    assert Orchestrator.get_task_graph(graph["id"], db_url)["last_run_id"] is None


def test_approval_is_required_when_asked(db_url: str) -> None:
    graph = Orchestrator.decompose_goal("g", lambda g: [{"id": "a"}], db_url)
    with pytest.raises(GoalError, match="not approved"):
        Orchestrator.execute_goal(graph["id"], None, {"*": _record}, db_url,
                                  require_approval=True)
    approved = Orchestrator.approve_task_graph(graph["id"], db_url)
    assert approved["status"] == "approved" and approved["approved_at"] is not None
    result = Orchestrator.execute_goal(graph["id"], None, {"*": _record}, db_url,
                                       require_approval=True)
    assert result.output == {"a": {"saw": [], "goal": "g"}}


def test_failed_goal_run_marks_the_graph_failed(db_url: str) -> None:
    def broken(inputs: dict[str, Any]) -> None:
        raise RuntimeError("no data")

    graph = Orchestrator.decompose_goal("g", lambda g: [{"id": "a"}], db_url)
    with pytest.raises(WorkflowFailed) as info:
        Orchestrator.execute_goal(graph["id"], None, {"a": broken}, db_url)
    assert info.value.step == "a" and "no data" in str(info.value.cause)
    assert Orchestrator.get_task_graph(graph["id"], db_url)["status"] == "failed"


def test_unknown_graph_id(db_url: str) -> None:
    with pytest.raises(GoalError, match="no task graph"):
        Orchestrator.get_task_graph("00000000-0000-0000-0000-000000000000", db_url)
