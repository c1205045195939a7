"""Decomposers: turn a goal (text) into a task list for the goal orchestrator.

A decomposer is any callable ``goal -> list[task]`` where a task is a mapping::

    {"id": "train", "description": "Train the model", "depends_on": ["clean"],
     "subtasks": [...]}            # subtasks optional, same shape, makes it hierarchical

Two are shipped: :class:`RuleDecomposer` (regular expressions -> task templates, for
examples and deterministic pipelines) and :class:`LLMDecomposer`, an adapter around any
``prompt -> text`` callable (an LLM client) that finds a JSON task list in the answer.
:func:`check_tasks` validates the shape of whatever a decomposer returned and raises
:class:`~swf_celery.errors.DecomposerError` saying exactly what is wrong; graph rules
(unknown dependencies, cycles, depth) are checked later on the flattened graph.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from swf_celery.errors import DecomposerError
from swf_celery.workflows.dag import QUALIFIER

Task = dict[str, Any]
_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,62}$")
#: The step options a planner's task may name (a subset of the step options of
#: :data:`swf_celery.workflows.steps.STORED_OPTIONS`); which of them it may *set* is the
#: caller's choice (:class:`PlannerPolicy`).
PLANNER_OPTIONS = ("queue", "resources", "execution", "max_attempts", "retry_delay", "timeout")
#: What a planner may set unless the caller allows more: ``resources`` only, which route
#: through the caller's own ``resource_queues``. Never by default: ``queue`` (where code
#: runs), ``execution`` (``"local"`` runs a task in the caller's process), ``max_attempts``,
#: ``retry_delay`` and ``timeout``.
DEFAULT_ALLOWED_OPTIONS = frozenset({"resources"})
_ALLOWED = {"id", "description", "depends_on", "subtasks", "step", "metadata", *PLANNER_OPTIONS}
_NUMBERS = {"max_attempts": (int,), "retry_delay": (int, float), "timeout": (int, float)}


@dataclass(frozen=True)
class PlannerPolicy:
    """What a planner's (an LLM's) task list may decide: the caller chooses.

    ``allowed_options``: step options a task may set (default
    :data:`DEFAULT_ALLOWED_OPTIONS`). ``allowed_queues``: the queues a task's ``queue`` may
    name; giving it allows ``queue``. A task outside this is refused by :meth:`check`.
    """

    allowed_options: frozenset[str] = DEFAULT_ALLOWED_OPTIONS
    allowed_queues: frozenset[str] = frozenset()

    @classmethod
    def of(cls, allowed_options: Any = None, allowed_queues: Any = None) -> PlannerPolicy:
        """The policy of a caller's ``allowed_options`` / ``allowed_queues`` arguments."""
        options = set(DEFAULT_ALLOWED_OPTIONS if allowed_options is None
                      else _names("allowed_options", allowed_options))
        unknown = options - set(PLANNER_OPTIONS)
        if unknown:
            raise DecomposerError(f"allowed_options has unknown option(s) {sorted(unknown)}; "
                                  f"a planner may be allowed: {list(PLANNER_OPTIONS)}")
        queues = frozenset(_names("allowed_queues", allowed_queues or ()))
        if queues:
            options.add("queue")
        elif "queue" in options:
            raise DecomposerError("allowed_options names 'queue': also give allowed_queues, "
                                  "the queues a planner may route tasks to")
        return cls(frozenset(options), queues)

    def check(self, tasks: Sequence[Mapping[str, Any]], *, parent: str = "") -> None:
        """Refuse a task (subtasks included) that sets an option or a queue the caller did
        not allow, naming the task and the field."""
        for task in tasks:
            qid = f"{parent}{QUALIFIER}{task.get('id')}" if parent else str(task.get("id"))
            for option in PLANNER_OPTIONS:
                if task.get(option) is None:
                    continue
                if option not in self.allowed_options:
                    raise DecomposerError(
                        f"task {qid!r}: the planner set {option!r}, which this caller does "
                        f"not allow (allowed_options: {sorted(self.allowed_options)}); "
                        "nothing was stored")
                if option == "queue" and task[option] not in self.allowed_queues:
                    raise DecomposerError(
                        f"task {qid!r}: queue {task[option]!r} is not one of allowed_queues "
                        f"{sorted(self.allowed_queues)}; nothing was stored")
            self.check(task.get("subtasks") or (), parent=qid)


def _names(what: str, value: Any) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, set, frozenset)) \
            or not all(isinstance(v, str) for v in value):
        raise DecomposerError(f"{what} must be a collection of names, got {value!r}")
    return list(value)


def check_tasks(raw: Any, *, path: str = "tasks") -> list[Task]:
    """Validate a decomposer's answer; return the tasks as plain dicts (copied).

    Accepts a list of task mappings or ``{"tasks": [...]}``.
    """
    if isinstance(raw, Mapping) and "tasks" in raw and path == "tasks":
        raw = raw["tasks"]
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise DecomposerError(
            f"decomposer returned {type(raw).__name__}, expected a list of task objects "
            "({id, description, depends_on, subtasks?})"
        )
    tasks: list[Task] = []
    for index, item in enumerate(raw):
        where = f"{path}[{index}]"
        if not isinstance(item, Mapping):
            raise DecomposerError(f"{where} is {type(item).__name__}, expected an object")
        unknown = set(item) - _ALLOWED
        if unknown:
            raise DecomposerError(f"{where} has unknown keys {sorted(unknown)}; allowed: "
                                  f"{sorted(_ALLOWED)}")
        task_id = item.get("id")
        if not isinstance(task_id, str) or not _ID.match(task_id):
            raise DecomposerError(
                f"{where}.id must be 1-63 characters of letters, digits, '_' or '-', "
                f"got {task_id!r}"
            )
        depends = item.get("depends_on", [])
        if depends is None:
            depends = []
        if not isinstance(depends, Sequence) or isinstance(depends, (str, bytes)) or not all(
                isinstance(d, str) for d in depends):
            raise DecomposerError(f"{where} ({task_id}).depends_on must be a list of task ids")
        description = item.get("description", "")
        if not isinstance(description, str):
            raise DecomposerError(f"{where} ({task_id}).description must be text")
        task: Task = {"id": task_id, "description": description, "depends_on": list(depends)}
        for key in ("step", "queue"):
            if key in item and item[key] is not None:
                if not isinstance(item[key], str):
                    raise DecomposerError(f"{where} ({task_id}).{key} must be text")
                task[key] = item[key]
        if item.get("execution") is not None:
            if item["execution"] not in ("local", "distributed"):
                raise DecomposerError(f"{where} ({task_id}).execution must be 'local' or "
                                      "'distributed'")
            task["execution"] = item["execution"]
        for key, types in _NUMBERS.items():
            if item.get(key) is not None:
                value = item[key]
                if isinstance(value, bool) or not isinstance(value, types) or value < 0:
                    raise DecomposerError(f"{where} ({task_id}).{key} must be a number >= 0")
                task[key] = value
        if "resources" in item and item["resources"] is not None:
            if not isinstance(item["resources"], Mapping):
                raise DecomposerError(f"{where} ({task_id}).resources must be an object")
            task["resources"] = dict(item["resources"])
        if "metadata" in item and item["metadata"] is not None:
            task["metadata"] = item["metadata"]
        if item.get("subtasks"):
            task["subtasks"] = check_tasks(item["subtasks"], path=f"{where}.subtasks")
        tasks.append(task)
    return tasks


def run_decomposer(decomposer: Callable[[str], Any], goal: str) -> list[Task]:
    """Call ``decomposer(goal)`` and validate its answer; wrap its own failures."""
    if not callable(decomposer):
        raise DecomposerError(f"decomposer must be callable, got {type(decomposer).__name__}")
    try:
        raw = decomposer(goal)
    except DecomposerError:
        raise
    except Exception as exc:
        raise DecomposerError(f"decomposer raised {type(exc).__name__}: {exc}") from exc
    return check_tasks(raw)


@dataclass(frozen=True)
class Rule:
    """A goal pattern and the task templates it expands to (``{goal}`` is substituted)."""

    pattern: str
    tasks: Sequence[Mapping[str, Any]]


class RuleDecomposer:
    """Decompose goals with regular-expression rules; the first matching rule wins.

    Descriptions may use ``{goal}`` and named groups of the pattern. A goal that
    matches no rule raises :class:`DecomposerError`.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = [(re.compile(rule.pattern, re.IGNORECASE), rule) for rule in rules]

    def __call__(self, goal: str) -> list[Task]:
        for regex, rule in self.rules:
            match = regex.search(goal)
            if match:
                values = {"goal": goal, **{k: v or "" for k, v in match.groupdict().items()}}
                return [_fill(task, values) for task in rule.tasks]
        raise DecomposerError(f"no rule matches the goal {goal!r}")


def _fill(task: Mapping[str, Any], values: Mapping[str, str]) -> Task:
    out = dict(task)
    if isinstance(out.get("description"), str):
        out["description"] = out["description"].format(**values)
    if out.get("subtasks"):
        out["subtasks"] = [_fill(sub, values) for sub in out["subtasks"]]
    return out


#: A rule set for the examples: data pipelines, with a GPU training step.
EXAMPLE_RULES = [
    Rule(r"train (?:a |an )?(?P<what>.+?) model", [
        {"id": "fetch", "description": "Fetch the data for {what}", "depends_on": []},
        {"id": "prepare", "description": "Prepare the data", "depends_on": ["fetch"],
         "subtasks": [
             {"id": "clean", "description": "Clean records", "depends_on": []},
             {"id": "features", "description": "Build features", "depends_on": ["clean"]},
         ]},
        {"id": "train", "description": "Train the {what} model", "depends_on": ["prepare"],
         "resources": {"gpu": True}},
        {"id": "evaluate", "description": "Evaluate the model", "depends_on": ["train"]},
        {"id": "report", "description": "Write the report for: {goal}",
         "depends_on": ["evaluate"]},
    ]),
    Rule(r".+", [
        {"id": "research", "description": "Research: {goal}", "depends_on": []},
        {"id": "plan", "description": "Plan the work", "depends_on": ["research"]},
        {"id": "do", "description": "Do the work", "depends_on": ["plan"]},
        {"id": "review", "description": "Review the result", "depends_on": ["do"]},
    ]),
]

DEFAULT_PROMPT = """You plan work as a task graph.
Goal: {goal}

Answer with JSON only: a list of tasks, each
{{"id": "short_snake_case_id", "description": "what to do", "depends_on": ["ids of tasks that
must finish first"], "subtasks": [optional list of tasks of the same shape]}}.
Use only ids you define; no cycles."""


class LLMDecomposer:
    """Adapt any ``prompt -> text`` callable (an LLM client) into a decomposer.

    The answer may wrap the JSON in prose or a ```json fence; the first JSON list (or an
    object with a ``tasks`` list) found is used. Malformed output raises
    :class:`DecomposerError` quoting the start of the answer.
    """

    def __init__(self, complete: Callable[[str], str], prompt: str = DEFAULT_PROMPT) -> None:
        self.complete = complete
        self.prompt = prompt

    def __call__(self, goal: str) -> list[Task]:
        answer = self.complete(self.prompt.format(goal=goal))
        if not isinstance(answer, str):
            raise DecomposerError(f"the text function returned {type(answer).__name__}, "
                                  "expected str")
        return check_tasks(extract_json(answer))


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """Find the first JSON list or object in ``text`` (fenced or bare) and parse it."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for start, char in enumerate(candidate):
            if char not in "[{":
                continue
            try:
                value, _end = decoder.raw_decode(candidate, start)
            except json.JSONDecodeError:
                continue
            if isinstance(value, list) or (isinstance(value, dict) and "tasks" in value):
                return value
    snippet = text.strip().replace("\n", " ")[:120]
    raise DecomposerError(f"no JSON task list found in the model's answer: {snippet!r}")
