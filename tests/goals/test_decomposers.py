"""Decomposer answers are validated; LLM text is parsed; no network, no database."""

from __future__ import annotations

import pytest

from swf_celery.errors import DecomposerError
from swf_celery.goals.decomposers import (
    EXAMPLE_RULES,
    LLMDecomposer,
    RuleDecomposer,
    check_tasks,
    extract_json,
    run_decomposer,
)


def test_rule_decomposer_fills_templates() -> None:
    tasks = RuleDecomposer(EXAMPLE_RULES)("Train a churn model for Q3")
    ids = [t["id"] for t in tasks]
    assert ids == ["fetch", "prepare", "train", "evaluate", "report"]
    assert tasks[2]["description"] == "Train the churn model"
    assert [s["id"] for s in tasks[1]["subtasks"]] == ["clean", "features"]


def test_rule_decomposer_without_match() -> None:
    with pytest.raises(DecomposerError, match="no rule matches"):
        RuleDecomposer([])("anything")


def test_llm_answer_in_a_fence_with_prose() -> None:
    answer = ('Sure! Here is the plan:\n```json\n[{"id": "a", "description": "A", '
              '"depends_on": []}, {"id": "b", "description": "B", "depends_on": ["a"]}]\n```')
    tasks = LLMDecomposer(lambda prompt: answer)("goal")
    assert [t["id"] for t in tasks] == ["a", "b"]


def test_llm_prompt_contains_goal() -> None:
    seen: list[str] = []
    LLMDecomposer(lambda p: seen.append(p) or '[{"id": "x"}]')("ship the release")
    assert "ship the release" in seen[0]


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        ("I cannot help with that.", "no JSON task list"),
        ('[{"id": "a b"}]', "tasks\\[0\\].id"),
        ('[{"id": "a", "depends_on": "b"}]', "depends_on must be a list"),
        ('[{"id": "a", "weird": 1}]', "unknown keys"),
        ('[1, 2]', "expected an object"),
        ('{"tasks": [{"id": "a", "subtasks": [{"nope": 1}]}]}', "subtasks\\[0\\]"),
    ],
)
def test_malformed_llm_output_is_named(answer: str, fragment: str) -> None:
    with pytest.raises(DecomposerError, match=fragment):
        LLMDecomposer(lambda p: answer)("goal")


def test_decomposer_that_raises_or_returns_garbage() -> None:
    def boom(goal: str) -> list[dict[str, str]]:
        raise RuntimeError("model offline")

    with pytest.raises(DecomposerError, match="decomposer raised RuntimeError: model offline"):
        run_decomposer(boom, "g")
    with pytest.raises(DecomposerError, match="returned str"):
        run_decomposer(lambda g: "not a list", "g")


def test_extract_json_accepts_tasks_object() -> None:
    assert extract_json('blah {"tasks": [{"id": "a"}]} blah') == {"tasks": [{"id": "a"}]}
    assert check_tasks({"tasks": [{"id": "a"}]})[0]["depends_on"] == []
