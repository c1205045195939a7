"""Dynamic flows: workflows stored in Postgres and built step by step at run time.

::

    flow = FlowBuilder.create_flow("etl", repo)                  # -> "etl" (the workflow id)
    FlowBuilder.add_step(flow, "extract", [], repo)
    FlowBuilder.add_step(flow, "load", ["extract"], repo, queue="io", max_attempts=5)
    Executor.execute_dynamic(flow, {"day": "2026-11-25"}, {"extract": extract_task,
                                                           "load": load_task}, repo)

The workflow id is the flow's name. ``add_step`` refuses an unknown dependency, a
duplicate step and a cycle at once, so a stored flow is always a valid DAG.
Code-defined workflows appear in :meth:`FlowBuilder.list_flows` too (``dynamic`` False),
recorded when they first run.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from swf_celery.db import DatabaseHandle, load_queries, resolve
from swf_celery.errors import (
    DuplicateStepError,
    FlowInUse,
    FlowNotFound,
    StepFunctionError,
    WorkflowDefinitionError,
)
from swf_celery.workflows import dag
from swf_celery.workflows.definition import WorkflowDef, build
from swf_celery.workflows.steps import STORED_OPTIONS, StepOptions, parse_options

QUERIES = load_queries(__package__)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}$")


def _check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise WorkflowDefinitionError(
            f"{kind} {name!r} is not a valid name: use 1-200 letters, digits, '_', '.', ':' "
            "or '-', starting with a letter, digit or '_'")
    return name


class FlowBuilder:
    """Create, extend, list, read and delete stored flows (the seed's ``FlowBuilder``)."""

    @staticmethod
    def create_flow(name: str, repo: DatabaseHandle | None = None) -> str:
        """Create an empty flow called ``name``; return its workflow id (the name)."""
        _check_name("flow name", name)
        with resolve(repo).connection() as conn:
            if conn.execute(QUERIES["create_flow"], {"slug": name}).fetchone() is None:
                raise WorkflowDefinitionError(f"a flow named {name!r} already exists")
        return name

    @staticmethod
    def add_step(workflow_id: str, step_name: str, depends_on: Sequence[str] = (),
                 repo: DatabaseHandle | None = None, **options: Any) -> dict[str, Any]:
        """Append a step and return it as :meth:`get_flow` lists it (``name``,
        ``depends_on`` and its options); refuses a duplicate name, an unknown dependency or
        a cycle.

        ``options`` are those of :func:`swf_celery.step`: ``queue``, ``execution``,
        ``max_attempts``, ``retry_delay``, ``timeout``, ``resources``, ``map_over``.
        """
        _check_name("step name", step_name)
        unknown = set(options) - set(STORED_OPTIONS)
        if unknown:
            raise WorkflowDefinitionError(
                f"add_step {step_name!r}: unknown option(s) {sorted(unknown)}; known: "
                f"{list(STORED_OPTIONS)}")
        opts = parse_options({"depends_on": list(depends_on or ()), **options},
                        where=f"flow {workflow_id!r} step {step_name!r}")
        with resolve(repo).connection() as conn:
            row = conn.execute(QUERIES["lock_flow"], {"slug": workflow_id}).fetchone()
            if row is None:
                raise FlowNotFound(f"flow {workflow_id!r} does not exist")
            flow_id, dynamic = row
            if not dynamic:
                raise WorkflowDefinitionError(
                    f"flow {workflow_id!r} is defined in code; add steps there")
            existing = [(name, list(deps)) for name, deps, _ in
                        conn.execute(QUERIES["flow_steps"], {"flow_id": flow_id})]
            if step_name in dict(existing):
                raise DuplicateStepError(f"flow {workflow_id!r} already has a step "
                                         f"{step_name!r}")
            deps = list(opts.depends_on)
            if opts.map_over and opts.map_over != "run" and opts.map_over not in deps:
                deps.append(opts.map_over)
            dag.validate(existing + [(step_name, deps)])
            stored = {key: getattr(opts, key) for key in STORED_OPTIONS}
            stored["resources"] = dict(opts.resources)
            if isinstance(opts.wait_until, dt.datetime):
                stored["wait_until"] = opts.wait_until.isoformat()
            conn.execute(QUERIES["add_step"], {"flow_id": flow_id, "step": step_name,
                                          "depends_on": deps, "options": json.dumps(stored)})
        return {"name": step_name, "depends_on": deps, **json.loads(json.dumps(stored))}

    @staticmethod
    def list_flows(repo: DatabaseHandle | None = None) -> list[dict[str, Any]]:
        """Every stored flow: ``workflow_id``, ``dynamic``, ``created_at``, ``step_count``."""
        with resolve(repo).connection() as conn:
            return [{"workflow_id": slug, "dynamic": dynamic, "created_at": created,
                     "step_count": count}
                    for slug, dynamic, created, count in conn.execute(QUERIES["list_flows"])]

    @staticmethod
    def get_flow(workflow_id: str, repo: DatabaseHandle | None = None) -> dict[str, Any]:
        """One flow with its steps (``name``, ``depends_on``, options); :class:`FlowNotFound`."""
        with resolve(repo).connection() as conn:
            row = conn.execute(QUERIES["get_flow"], {"slug": workflow_id}).fetchone()
            if row is None:
                raise FlowNotFound(f"flow {workflow_id!r} does not exist")
            flow_id, slug, dynamic, created = row
            steps = [{"name": name, "depends_on": list(deps), **(options or {})}
                     for name, deps, options in
                     conn.execute(QUERIES["flow_steps"], {"flow_id": flow_id})]
        return {"workflow_id": slug, "dynamic": dynamic, "created_at": created,
                "steps": steps}

    @staticmethod
    def delete_flow(workflow_id: str, repo: DatabaseHandle | None = None) -> None:
        """Delete a flow; :class:`FlowInUse` while it has runs in progress or paused.

        Finished runs are kept (their ``workflow_slug`` still names the flow).
        """
        with resolve(repo).connection() as conn:
            row = conn.execute(QUERIES["lock_flow"], {"slug": workflow_id}).fetchone()
            if row is None:
                raise FlowNotFound(f"flow {workflow_id!r} does not exist")
            count = conn.execute(QUERIES["active_runs"], {"flow_id": row[0]}).fetchone()
            active = count[0] if count else 0
            if active:
                raise FlowInUse(f"flow {workflow_id!r} has {active} run(s) in progress or "
                                "paused: cancel or finish them first")
            conn.execute(QUERIES["delete_flow"], {"flow_id": row[0]})


def load_dynamic(workflow_id: str, step_functions: Mapping[str, Any], repo: DatabaseHandle | None,
                 *, resource_queues: Mapping[str, str] | None = None) -> WorkflowDef:
    """A stored flow plus the functions of its steps as a validated :class:`WorkflowDef`."""
    flow = FlowBuilder.get_flow(workflow_id, repo)
    if not flow["dynamic"]:
        raise WorkflowDefinitionError(
            f"flow {workflow_id!r} is defined in code: run it with Executor.execute")
    if not flow["steps"]:
        raise WorkflowDefinitionError(f"flow {workflow_id!r} has no steps yet")
    names = [s["name"] for s in flow["steps"]]
    missing = [n for n in names if n not in step_functions]
    if missing:
        raise StepFunctionError(f"flow {workflow_id!r}: no function given for step(s) "
                                f"{missing}")
    extra = sorted(set(step_functions) - set(names))
    if extra:
        raise StepFunctionError(f"flow {workflow_id!r} has no step(s) {extra} "
                                f"(steps: {names})")
    entries: list[tuple[str, Any, StepOptions]] = []
    for s in flow["steps"]:
        raw = {k: s[k] for k in STORED_OPTIONS if s.get(k) is not None}
        raw["depends_on"] = s["depends_on"]
        entries.append((s["name"], step_functions[s["name"]],
                        parse_options(raw, where=f"flow {workflow_id!r} step {s['name']!r}")))
    return build(workflow_id, entries, resource_queues=resource_queues)

