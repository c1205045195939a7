"""Dynamic flows: FlowBuilder and Executor.execute_dynamic (local step functions)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from swf_celery.db import resolve
from swf_celery.errors import (
    CycleError,
    DuplicateStepError,
    FlowInUse,
    FlowNotFound,
    StepFunctionError,
    UnknownDependencyError,
    WorkflowDefinitionError,
)
from swf_celery.workflows import coordinator, definition
from swf_celery.workflows.executor import Executor
from swf_celery.workflows.flows import FlowBuilder
from tests.workflows.sample_flows import Diamond

pytestmark = pytest.mark.usefixtures("join_run_drivers")


def test_build_list_get_execute_delete(db_url: str) -> None:
    flow = FlowBuilder.create_flow("etl", db_url)
    assert flow == "etl"
    FlowBuilder.add_step(flow, "extract", [], db_url)
    FlowBuilder.add_step(flow, "transform", ["extract"], db_url, max_attempts=5,
                         resources={"gpu": True})
    FlowBuilder.add_step(flow, "load", ["transform"], db_url, timeout=30)

    got = FlowBuilder.get_flow(flow, db_url)
    assert got["workflow_id"] == "etl" and got["dynamic"] is True
    assert [(s["name"], s["depends_on"]) for s in got["steps"]] == [
        ("extract", []), ("transform", ["extract"]), ("load", ["transform"])]
    assert got["steps"][1]["max_attempts"] == 5
    assert got["steps"][1]["resources"] == {"gpu": True}
    assert [f["workflow_id"] for f in FlowBuilder.list_flows(db_url)] == ["etl"]
    assert FlowBuilder.list_flows(db_url)[0]["step_count"] == 3

    functions = {
        "extract": lambda inputs: inputs["run"]["rows"],
        "transform": lambda inputs: [r * 10 for r in inputs["extract"]],
        "load": lambda inputs: {"loaded": len(inputs["transform"]),
                                "sum": sum(inputs["transform"])},
    }
    result = Executor.execute_dynamic(flow, {"rows": [1, 2, 3]}, functions, db_url)
    assert result.output == {"load": {"loaded": 3, "sum": 60}}
    with psycopg.connect(db_url) as conn:
        resources = conn.execute("SELECT resources FROM swf.step_states WHERE step_name = "
                                 "'transform'").fetchone()[0]
    assert resources == {"gpu": True}

    FlowBuilder.delete_flow(flow, db_url)
    assert FlowBuilder.list_flows(db_url) == []
    with pytest.raises(FlowNotFound):
        FlowBuilder.get_flow(flow, db_url)
    with psycopg.connect(db_url) as conn:  # finished runs are kept
        assert conn.execute("SELECT flow_slug, status FROM swf.runs").fetchall() == [
            ("etl", "completed")]


def test_add_step_refuses_bad_graphs(db_url: str) -> None:
    flow = FlowBuilder.create_flow("g", db_url)
    with pytest.raises(WorkflowDefinitionError, match="already exists"):
        FlowBuilder.create_flow("g", db_url)
    FlowBuilder.add_step(flow, "a", [], db_url)
    with pytest.raises(UnknownDependencyError, match="'zzz'"):
        FlowBuilder.add_step(flow, "b", ["zzz"], db_url)
    with pytest.raises(CycleError):
        FlowBuilder.add_step(flow, "b", ["a", "b"], db_url)
    with pytest.raises(DuplicateStepError):
        FlowBuilder.add_step(flow, "a", [], db_url)
    with pytest.raises(WorkflowDefinitionError, match="unknown option"):
        FlowBuilder.add_step(flow, "c", ["a"], db_url, retries=2)
    with pytest.raises(WorkflowDefinitionError, match="not a valid name"):
        FlowBuilder.add_step(flow, "bad name; drop", ["a"], db_url)
    with pytest.raises(FlowNotFound):
        FlowBuilder.add_step("nope", "x", [], db_url)
    assert [s["name"] for s in FlowBuilder.get_flow(flow, db_url)["steps"]] == ["a"]


def test_execute_dynamic_checks_functions(db_url: str) -> None:
    flow = FlowBuilder.create_flow("f", db_url)
    FlowBuilder.add_step(flow, "a", [], db_url)
    with pytest.raises(StepFunctionError, match=r"no function given for step\(s\) \['a'\]"):
        Executor.execute_dynamic(flow, {}, {}, db_url)
    with pytest.raises(StepFunctionError, match=r"has no step\(s\) \['b'\]"):
        Executor.execute_dynamic(flow, {}, {"a": print, "b": print}, db_url)
    with pytest.raises(FlowNotFound):
        Executor.execute_dynamic("missing", {}, {}, db_url)


def test_delete_refused_while_a_run_is_in_progress(db_url: str) -> None:
    flow = FlowBuilder.create_flow("busy", db_url)
    FlowBuilder.add_step(flow, "wait", [], db_url)
    release = threading.Event()
    started = threading.Event()

    def wait(inputs: dict[str, Any]) -> str:
        started.set()
        release.wait(10)
        return "done"

    run_id = Executor.start_dynamic(flow, {}, {"wait": wait}, db_url)
    assert started.wait(10)
    with pytest.raises(FlowInUse, match="in progress"):
        FlowBuilder.delete_flow(flow, db_url)
    release.set()
    assert Executor.wait(run_id, db_url, timeout=10_000).output == {"wait": "done"}
    FlowBuilder.delete_flow(flow, db_url)


def test_code_defined_flows_are_listed(db_url: str) -> None:
    Executor.execute(Diamond, {"n": 1}, db_url)
    Executor.execute(Diamond, {"n": 2}, db_url)
    [listed] = FlowBuilder.list_flows(db_url)
    assert listed["workflow_id"].endswith("Diamond") and listed["dynamic"] is False
    assert [s["name"] for s in FlowBuilder.get_flow(listed["workflow_id"], db_url)["steps"]] \
        == ["fetch", "left", "right", "join"]
    with pytest.raises(WorkflowDefinitionError, match="defined in code"):
        FlowBuilder.add_step(listed["workflow_id"], "x", [], db_url)


def test_concurrent_first_runs_of_a_changed_code_defined_flow(db_url: str) -> None:
    """Several first runs of a changed workflow refresh its catalogue entry once."""
    def fn(inputs: dict[str, Any]) -> None:
        return None

    def version(*names: str) -> definition.WorkflowDef:
        opts = definition.StepOptions()
        return definition.build("tests.versioned", [(n, fn, opts) for n in names])

    db = resolve(db_url)
    coordinator.start_run(db, version("a"), {})
    wf = version("a", "b")
    errors: list[BaseException] = []
    started: list[str] = []
    start = threading.Barrier(6)

    def run() -> None:
        start.wait()
        try:
            started.append(coordinator.start_run(db, wf, {"n": 1}))
        except BaseException as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(set(started)) == 6
    steps = FlowBuilder.get_flow("tests.versioned", db_url)["steps"]
    assert [s["name"] for s in steps] == ["a", "b"]


def test_a_code_defined_workflow_cannot_take_a_dynamic_flows_name(db_url: str) -> None:
    class Clash(Diamond):
        __workflow_slug__ = "taken"

    FlowBuilder.create_flow("taken", db_url)
    with pytest.raises(WorkflowDefinitionError, match="flow taken is a dynamic flow"):
        Executor.execute(Clash, {"n": 1}, db_url)
