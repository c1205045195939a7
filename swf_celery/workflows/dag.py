"""Directed acyclic graphs of steps: validation, topological order, layers, flattening.

Pure Python (no Celery, kombu or psycopg), so every rule here is tested without a
database. A graph is an ordered sequence of ``(step_name, dependencies)`` pairs; the
order is the definition order and makes every result below deterministic.

Rules checked by :func:`validate`, each with its own error class:

- a step name appears once (:class:`~swf_celery.errors.DuplicateStepError`);
- every dependency names a step of the graph (:class:`~swf_celery.errors.UnknownDependencyError`);
- no step depends on a step named ``run`` (:data:`RESERVED_INPUTS`), whose output would
  overwrite the run input in the step input (:class:`~swf_celery.errors.WorkflowDefinitionError`;
  a map step's ``item`` and ``index`` are checked where map steps are known,
  :func:`swf_celery.workflows.definition.build`);
- there is no cycle (:class:`~swf_celery.errors.CycleError`, whose ``cycle`` lists the
  steps of one cycle in dependency order, e.g. ``["a", "b", "c", "a"]``), even when no step
  is a root;
- at least one step has no dependency (:class:`~swf_celery.errors.NoRootStepError`).

:func:`flatten` turns a hierarchical task list (tasks with ``subtasks``) into a flat one:
see its docstring for the rules.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from swf_celery.errors import (
    CycleError,
    DuplicateStepError,
    NoRootStepError,
    UnknownDependencyError,
    WorkflowDefinitionError,
)

Graph = Sequence[tuple[str, Sequence[str]]]

#: Separator of qualified ids produced by :func:`flatten` ("parent.child").
QUALIFIER = "."
#: Keys of every step's input mapping besides its dependencies' outputs.
RESERVED_INPUTS = ("run",)
#: Further keys of a map step's input mapping.
MAP_INPUTS = ("item", "index")


def as_mapping(graph: Graph) -> dict[str, list[str]]:
    """``{step: [dependencies]}`` in definition order; raises on a duplicate step."""
    deps: dict[str, list[str]] = {}
    for name, depends_on in graph:
        if not isinstance(name, str) or not name:
            raise WorkflowDefinitionError(f"step name must be a non-empty string, not {name!r}")
        if name in deps:
            raise DuplicateStepError(f"step {name!r} is defined twice")
        if isinstance(depends_on, str):
            raise WorkflowDefinitionError(
                f"step {name!r}: depends_on must be a list of step names, not the string "
                f"{depends_on!r} (write [{depends_on!r}])")
        seen: list[str] = []
        for dep in depends_on:
            if dep not in seen:  # a repeated dependency is one edge, not two
                seen.append(dep)
        deps[name] = seen
    return deps


def validate(graph: Graph) -> dict[str, list[str]]:
    """Check every rule of the module docstring; return the graph as a mapping."""
    deps = as_mapping(graph)
    if not deps:
        raise WorkflowDefinitionError("a workflow needs at least one step")
    for name, depends_on in deps.items():
        for dep in depends_on:
            if dep == name:
                raise CycleError(f"step {name!r} depends on itself", [name, name])
            if dep not in deps:
                known = ", ".join(sorted(deps))
                raise UnknownDependencyError(
                    f"step {name!r} depends on unknown step {dep!r} (steps: {known})")
            if dep in RESERVED_INPUTS:
                raise WorkflowDefinitionError(
                    f"step {name!r} depends on a step named {dep!r}, whose output would "
                    f"overwrite the input key {dep!r}: rename that step")
    cycle = find_cycle(deps)
    if cycle:
        raise CycleError("workflow has a cycle: " + " -> ".join(cycle), cycle)
    if all(depends_on for depends_on in deps.values()):
        raise NoRootStepError(
            "every step has a dependency, so none can start: give at least one step "
            "depends_on=[]")
    return deps


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]`` (each step depends on the next), or ``None``.

    Iterative depth-first search, so a 10,000-step chain does not hit the recursion limit.
    Unknown dependencies are ignored here (``validate`` reports them first).
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(deps, white)
    for start in deps:
        if colour[start] != white:
            continue
        path: list[str] = [start]
        iters = [iter(deps[start])]
        colour[start] = grey
        while iters:
            dep = next(iters[-1], None)
            if dep is None:
                colour[path.pop()] = black
                iters.pop()
                continue
            if dep not in colour:
                continue
            if colour[dep] == grey:
                return path[path.index(dep):] + [dep]
            if colour[dep] == white:
                colour[dep] = grey
                path.append(dep)
                iters.append(iter(deps[dep]))
    return None


def dependents(deps: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """``{step: [steps that depend on it]}``, in definition order."""
    out: dict[str, list[str]] = {name: [] for name in deps}
    for name, depends_on in deps.items():
        for dep in depends_on:
            out[dep].append(name)
    return out


def leaves(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Steps nothing depends on (their outputs form a run's result), in definition order."""
    used = {dep for depends_on in deps.values() for dep in depends_on}
    return [name for name in deps if name not in used]


def layers(deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Steps grouped by depth: layer 0 has no dependency, layer n depends on layers < n.

    Steps of one layer can run in parallel. Raises :class:`CycleError` on a cycle.
    """
    depth: dict[str, int] = {}
    for name in topological_order(deps):
        depth[name] = 1 + max((depth[d] for d in deps[name]), default=-1)
    out: list[list[str]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for name in deps:
        out[depth[name]].append(name)
    return out


def topological_order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Every step after its dependencies; ties keep definition order (Kahn's algorithm)."""
    remaining = {name: len(depends_on) for name, depends_on in deps.items()}
    children = dependents(deps)
    index = {name: i for i, name in enumerate(deps)}

    ready = [(index[name], name) for name, count in remaining.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for child in children[name]:
            remaining[child] -= 1
            if remaining[child] == 0:
                heapq.heappush(ready, (index[child], child))
    if len(order) != len(deps):
        cycle = find_cycle(deps) or []
        raise CycleError("workflow has a cycle: " + " -> ".join(cycle), cycle)
    return order


# -- hierarchical task lists ------------------------------------------------------------


def flatten(tasks: Iterable[Mapping[str, Any]], *, max_depth: int = 5) -> list[dict[str, Any]]:
    """Flatten a hierarchical task list into leaf tasks with qualified ids.

    Each task is a mapping ``{"id", "depends_on"?, "subtasks"?, ...}``. Rules:

    - a subtask's id is qualified by its parent's: ``"build"`` under ``"deploy"`` becomes
      ``"deploy.build"``; only leaves (tasks without subtasks) remain in the result, with
      their other keys kept;
    - a subtask's ``depends_on`` names siblings (resolved within the same parent first) or
      any task by its qualified id;
    - a subtask inherits its parent's dependencies;
    - a dependency on a task that has subtasks means a dependency on all of its leaves
      (so the parent's dependents wait for its whole subtree);
    - nesting deeper than ``max_depth`` levels is an error.

    The result is validated with :func:`validate`; errors name the qualified ids.
    """
    nodes: dict[str, dict[str, Any]] = {}  # qualified id -> node (also parents)
    order: list[str] = []

    def walk(items: Iterable[Mapping[str, Any]], parent: str | None, inherited: list[str],
             depth: int) -> None:
        if depth > max_depth:
            raise WorkflowDefinitionError(
                f"task {parent!r} nests subtasks deeper than {max_depth} levels")
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise WorkflowDefinitionError(
                f"subtasks of {parent!r} must be a list of tasks, not {type(items).__name__}")
        siblings = []
        for item in items:
            if not isinstance(item, Mapping):
                raise WorkflowDefinitionError(
                    f"a task must be a mapping with an 'id', not {item!r:.80}")
            raw_id = item.get("id")
            if not isinstance(raw_id, str) or not raw_id:
                raise WorkflowDefinitionError(f"task {dict(item)!r:.80} has no string 'id'")
            siblings.append(raw_id)
        for item in items:
            raw_id = item["id"]
            qid = f"{parent}{QUALIFIER}{raw_id}" if parent else raw_id
            if qid in nodes:
                raise DuplicateStepError(f"task {qid!r} is defined twice")
            own = item.get("depends_on") or []
            if isinstance(own, str):
                raise WorkflowDefinitionError(
                    f"task {qid!r}: depends_on must be a list, not the string {own!r}")
            qualified = [f"{parent}{QUALIFIER}{d}" if parent and d in siblings else d
                         for d in own]
            node = {k: v for k, v in item.items() if k != "subtasks"}
            node["id"] = qid
            node["depends_on"] = inherited + [d for d in qualified if d not in inherited]
            nodes[qid] = node
            order.append(qid)
            subtasks = item.get("subtasks")
            if subtasks:
                node["_children"] = True
                walk(subtasks, qid, node["depends_on"], depth + 1)

    walk(list(tasks), None, [], 1)

    parents = {qid for qid in order if nodes[qid].pop("_children", False)}

    def leaf_ids(qid: str) -> list[str]:
        if qid not in parents:
            return [qid]
        prefix = qid + QUALIFIER
        return [q for q in order if q.startswith(prefix) and q not in parents]

    flat: list[dict[str, Any]] = []
    for qid in order:
        node = nodes[qid]
        if qid in parents:
            continue
        expanded: list[str] = []
        for dep in node["depends_on"]:
            for target in (leaf_ids(dep) if dep in nodes else [dep]):
                if target not in expanded:
                    expanded.append(target)
        node["depends_on"] = expanded
        flat.append(node)
    validate([(n["id"], n["depends_on"]) for n in flat])
    return flat
