"""The pure DAG rules: validation errors, order, layers, flattening (no database)."""

from __future__ import annotations

import sys

import pytest

from swf_celery.errors import (
    CycleError,
    DuplicateStepError,
    UnknownDependencyError,
    WorkflowDefinitionError,
)
from swf_celery.workflows import dag

DIAMOND = [("fetch", []), ("left", ["fetch"]), ("right", ["fetch"]), ("join", ["left", "right"])]


def test_diamond_order_layers_leaves() -> None:
    deps = dag.validate(DIAMOND)
    assert dag.topological_order(deps) == ["fetch", "left", "right", "join"]
    assert dag.layers(deps) == [["fetch"], ["left", "right"], ["join"]]
    assert dag.leaves(deps) == ["join"]
    assert dag.dependents(deps) == {"fetch": ["left", "right"], "left": ["join"],
                                    "right": ["join"], "join": []}


def test_order_keeps_definition_order_among_ready_steps() -> None:
    deps = dag.validate([("b", []), ("a", []), ("c", ["a"]), ("d", ["b"])])
    assert dag.topological_order(deps) == ["b", "a", "c", "d"]


def test_unknown_dependency_names_both() -> None:
    with pytest.raises(UnknownDependencyError, match="'b' depends on unknown step 'zzz'"):
        dag.validate([("a", []), ("b", ["zzz"])])


def test_cycle_is_named() -> None:
    with pytest.raises(CycleError) as info:
        dag.validate([("root", []), ("a", ["root", "c"]), ("b", ["a"]), ("c", ["b"])])
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    assert " -> ".join(cycle) in str(info.value)


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(CycleError, match="depends on itself"):
        dag.validate([("root", []), ("a", ["a"])])


def test_duplicate_step() -> None:
    with pytest.raises(DuplicateStepError, match="'a' is defined twice"):
        dag.validate([("a", []), ("a", [])])


def test_a_graph_without_root_reports_its_cycle_by_name() -> None:
    with pytest.raises(CycleError, match="a -> b -> a") as caught:
        dag.validate([("a", ["b"]), ("b", ["a"])])
    assert caught.value.cycle == ["a", "b", "a"]
    with pytest.raises(CycleError, match="y -> z -> y"):
        dag.validate([("x", ["y"]), ("y", ["z"]), ("z", ["y"])])


def test_a_dependency_named_run_is_refused() -> None:
    with pytest.raises(WorkflowDefinitionError, match="input key 'run'"):
        dag.validate([("run", []), ("b", ["run"])])
    assert dag.validate([("run", [])]) == {"run": []}  # nothing reads it: harmless
    # "index" only matters to a map step (definition.build checks that).
    assert dag.validate([("index", []), ("b", ["index"])]) == {"index": [], "b": ["index"]}


def test_a_map_step_depending_on_item_or_index_is_refused() -> None:
    from swf_celery.workflows import definition, steps

    for key in ("item", "index"):
        entries = [(key, lambda i: [1], steps.parse_options({}, where=key)),
                   ("each", lambda i: i, steps.parse_options(
                       {"depends_on": [key], "map_over": key}, where="each"))]
        with pytest.raises(WorkflowDefinitionError, match=f"input key '{key}'"):
            definition.build("clash", entries)


def test_empty_graph_and_string_depends_on() -> None:
    with pytest.raises(WorkflowDefinitionError, match="at least one step"):
        dag.validate([])
    with pytest.raises(WorkflowDefinitionError, match=r"write \['a'\]"):
        dag.validate([("a", []), ("b", "a")])


def test_long_chain_does_not_recurse() -> None:
    n = sys.getrecursionlimit() * 3
    graph = [("s0", [])] + [(f"s{i}", [f"s{i - 1}"]) for i in range(1, n)]
    deps = dag.validate(graph)
    assert dag.topological_order(deps)[-1] == f"s{n - 1}"
    assert len(dag.layers(deps)) == n
    with pytest.raises(CycleError):
        dag.validate(graph + [("s0x", []), ("loop", [f"s{n - 1}", "loop2"]), ("loop2", ["loop"])])


def test_layered_dag_of_1000() -> None:
    graph = []
    for layer in range(20):
        for i in range(50):
            deps = [] if layer == 0 else [f"l{layer - 1}_{i}", f"l{layer - 1}_{(i + 1) % 50}"]
            graph.append((f"l{layer}_{i}", deps))
    deps = dag.validate(graph)
    assert [len(x) for x in dag.layers(deps)] == [50] * 20
    assert len(dag.leaves(deps)) == 50


def test_flatten_hierarchy() -> None:
    tasks = [
        {"id": "research", "description": "r"},
        {"id": "build", "depends_on": ["research"], "subtasks": [
            {"id": "backend"},
            {"id": "frontend", "depends_on": ["backend"]},
            {"id": "docs"},
        ]},
        {"id": "ship", "depends_on": ["build"]},
    ]
    flat = dag.flatten(tasks)
    by_id = {t["id"]: t for t in flat}
    assert list(by_id) == ["research", "build.backend", "build.frontend", "build.docs", "ship"]
    assert by_id["research"]["description"] == "r"
    assert by_id["build.backend"]["depends_on"] == ["research"]
    assert by_id["build.frontend"]["depends_on"] == ["research", "build.backend"]
    assert by_id["ship"]["depends_on"] == ["build.backend", "build.frontend", "build.docs"]


def test_flatten_nested_parent_dependents_wait_for_all_leaves() -> None:
    tasks = [{"id": "a", "subtasks": [{"id": "b", "subtasks": [{"id": "c"}, {"id": "d"}]},
                                      {"id": "e"}]},
             {"id": "z", "depends_on": ["a"]}]
    flat = dag.flatten(tasks)
    assert {t["id"]: t["depends_on"] for t in flat} == {
        "a.b.c": [], "a.b.d": [], "a.e": [], "z": ["a.b.c", "a.b.d", "a.e"]}


def test_flatten_errors() -> None:
    with pytest.raises(DuplicateStepError, match="'a.b'"):
        dag.flatten([{"id": "a", "subtasks": [{"id": "b"}, {"id": "b"}]}])
    with pytest.raises(UnknownDependencyError, match="'nope'"):
        dag.flatten([{"id": "a"}, {"id": "b", "depends_on": ["nope"]}])
    with pytest.raises(WorkflowDefinitionError, match="deeper than 2"):
        dag.flatten([{"id": "a", "subtasks": [{"id": "b", "subtasks": [{"id": "c"}]}]}],
                    max_depth=2)
    with pytest.raises(WorkflowDefinitionError, match="no string 'id'"):
        dag.flatten([{"name": "x"}])
    with pytest.raises(CycleError):
        dag.flatten([{"id": "r"}, {"id": "a", "depends_on": ["r", "b"]},
                     {"id": "b", "depends_on": ["a"]}])


def test_dag_module_imports_no_celery_or_database() -> None:
    # The package itself registers the kombu transport on import, so look at what dag.py
    # (and the errors module it uses) import, not at sys.modules.
    import ast
    from pathlib import Path

    import swf_celery.errors

    for module in (dag, swf_celery.errors):
        tree = ast.parse(Path(module.__file__).read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        names |= {node.module or "" for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom)}
        assert not {n.split(".")[0] for n in names} & {"celery", "kombu", "psycopg"}, names


def test_package_import_does_not_load_the_workflow_layer() -> None:
    import subprocess

    # The step runner's registration hook (celery._state, as Celery's own built-in tasks)
    # loads; Celery's app machinery and the engine do not.
    code = ("import sys, swf_celery; "
            "eager = [m for m in ('swf_celery.workflows.definition', "
            "'swf_celery.workflows.executor', 'swf_celery.workflows.coordinator', "
            "'swf_celery.workflows.worker_task', 'swf_celery.db', 'celery.app', "
            "'psycopg') if m in sys.modules]; "
            "print(eager); sys.exit(1 if eager else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-c", "import swf_celery; print(swf_celery.Executor)"],
                          capture_output=True, text=True)
    assert "swf_celery.workflows.executor.Executor" in proc.stdout, proc.stderr


def test_every_celery_app_gets_the_step_runner_from_the_package_import() -> None:
    """Apps finalised before or after ``import swf_celery``, and apps that only name the
    transport (``broker_transport``), all get ``swf_celery.step`` and the sweeper."""
    import subprocess

    code = (
        "from celery import Celery\n"
        "early = Celery('early'); early.finalize()\n"
        "import swf_celery\n"
        "late = Celery('late')\n"
        "print('swf_celery.step' in early.tasks, 'swf_celery.step' in late.tasks,\n"
        "      any(s.__name__ == 'TimeoutSweeper' for s in late.steps['worker']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["True", "True", "True"], proc.stderr
    code = (
        "from celery import Celery\n"
        "from kombu.utils.imports import symbol_by_name\n"
        "app = Celery('t', broker='postgresql://x/y',\n"
        "             broker_transport='swf_celery.transport:Transport')\n"
        "symbol_by_name(app.conf.broker_transport)  # what kombu does to connect\n"
        "print('swf_celery.step' in app.tasks)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["True"], proc.stderr
