"""The workflow engine with local execution: real Postgres, real NOTIFY, no Celery worker."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psycopg
import pytest

import swf_celery as swf
from swf_celery.db import resolve
from swf_celery.errors import (
    CycleError,
    DuplicateStepError,
    RunInputError,
    StepFunctionError,
    UnknownDependencyError,
    WorkflowDefinitionError,
    WorkflowFailed,
)
from swf_celery.workflows import coordinator, definition, steps
from swf_celery.workflows.executor import Executor
from tests.helpers import sql_value
from tests.workflows.sample_flows import Diamond

pytestmark = pytest.mark.usefixtures("join_run_drivers")


def _count(url: str, table: str) -> int:
    return sql_value(url, f"SELECT count(*) FROM swf.{table}")  # noqa: S608


def test_diamond_runs_locally_and_records_states(db_url: str) -> None:
    result = Executor.execute(Diamond, {"n": 5}, db_url)
    assert result.output == {"join": {"sum": 16, "saw": ["left", "right", "run"]}}
    with psycopg.connect(db_url) as conn:
        run = conn.execute("SELECT status, total_steps, remaining_steps, flow_slug "
                           "FROM swf.runs WHERE id = %s", (result.run_id,)).fetchone()
        steps = dict(conn.execute("SELECT step_name, status FROM swf.step_states "
                                  "WHERE run_id = %s", (result.run_id,)).fetchall())
    assert run == ("completed", 4, 0, "tests.workflows.sample_flows.Diamond")
    assert set(steps.values()) == {"completed"}


def test_seed_workflow_steps_form(db_url: str) -> None:
    def double(inputs: dict[str, Any]) -> int:
        return inputs["run"] * 2

    def add(inputs: dict[str, Any]) -> int:
        return inputs["double"] + 1

    class Seed:
        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return [("double", double, {"depends_on": []}),
                    ("add", add, {"depends_on": ["double"]})]

    assert Executor.execute(Seed, 20, db_url).output == {"add": 41}


def test_events_are_notified_for_every_transition(db_url: str) -> None:
    events: list[dict[str, Any]] = []
    listener = psycopg.connect(db_url, autocommit=True)
    listener.execute('LISTEN "swf_workflow_events"')
    result = Executor.execute(Diamond, {"n": 1}, db_url)
    for note in listener.notifies(timeout=0.5):
        events.append(json.loads(note.payload))
    listener.close()
    mine = [e for e in events if e["run_id"] == result.run_id]
    assert set(mine[0]) == {"swf_message_id", "run_id", "step", "status"}
    ids = [e.pop("swf_message_id") for e in mine]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert mine[0] == {"run_id": result.run_id, "step": None, "status": "in_progress"}
    assert mine[-1] == {"run_id": result.run_id, "step": None, "status": "completed"}
    for step in ("fetch", "left", "right", "join"):
        statuses = [e["status"] for e in mine if e["step"] == step]
        assert statuses == ["started", "completed"], (step, statuses)


def _layered(layers: int, width: int) -> list[Any]:
    def noop(inputs: dict[str, Any]) -> int:
        return len(inputs)

    entries = []
    for layer in range(layers):
        for i in range(width):
            deps = [] if layer == 0 else [f"s{layer - 1}_{i}", f"s{layer - 1}_{(i + 1) % width}"]
            entries.append((f"s{layer}_{i}", noop, {"depends_on": deps}))
    return entries


def test_thousand_step_layered_dag_completes(db_url: str) -> None:
    entries = _layered(20, 50)

    class Big:
        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return entries

    result = Executor.execute(Big, {}, db_url, max_local_workers=8)
    assert len(result.output) == 50
    assert set(result.output.values()) == {3}  # run + two dependencies
    assert _count(db_url, "step_tasks") == 1000


def test_fail_twice_then_succeed_under_max_attempts(db_url: str) -> None:
    calls: list[int] = []

    class Flaky:
        @swf.step(max_attempts=3, retry_delay=0.05)
        def flaky(inputs: dict[str, Any]) -> str:
            calls.append(1)
            if len(calls) < 3:
                raise RuntimeError(f"boom {len(calls)}")
            return "ok"

    result = Executor.execute(Flaky, None, db_url)
    assert result.output == {"flaky": "ok"}
    assert len(calls) == 3
    with psycopg.connect(db_url) as conn:
        attempt, error = conn.execute("SELECT attempt, error FROM swf.step_tasks").fetchone()
    assert attempt == 3
    assert error == "RuntimeError: boom 2"  # the last failure is kept for the status view


def test_exhausted_attempts_fail_the_run_with_step_and_cause(db_url: str) -> None:
    class Broken:
        @swf.step()
        def ok(inputs: dict[str, Any]) -> int:
            return 1

        @swf.step(depends_on=["ok"], max_attempts=2, retry_delay=0)
        def broken(inputs: dict[str, Any]) -> int:
            raise ValueError("bad data")

        @swf.step(depends_on=["broken"])
        def never(inputs: dict[str, Any]) -> int:
            raise AssertionError("must not run")

    with pytest.raises(WorkflowFailed) as info:
        Executor.execute(Broken, {}, db_url)
    err = info.value
    assert err.step == "broken"
    assert err.cause == "ValueError: bad data"
    assert err.run_id and err.run_id in str(err)
    with psycopg.connect(db_url) as conn:
        states = dict(conn.execute("SELECT step_name, status FROM swf.step_states "
                                   "WHERE run_id = %s", (err.run_id,)).fetchall())
        run = conn.execute("SELECT status, failed_step FROM swf.runs").fetchone()
    assert states == {"ok": "completed", "broken": "failed", "never": "created"}
    assert run == ("failed", "broken")


def test_step_over_its_timeout_fails_that_attempt(db_url: str) -> None:
    release = threading.Event()
    attempts: list[int] = []

    class Slow:
        @swf.step(timeout=0.3, max_attempts=2, retry_delay=0)
        def slow(inputs: dict[str, Any]) -> str:
            attempts.append(1)
            if len(attempts) == 1:
                release.wait(10)  # first attempt hangs past its timeout
                return "late"
            return "second"

    try:
        result = Executor.execute(Slow, {}, db_url)
    finally:
        release.set()
    assert result.output == {"slow": "second"}
    with psycopg.connect(db_url) as conn:
        error = conn.execute("SELECT error FROM swf.step_tasks").fetchone()[0]
    assert error == "timed out after 0.3 s"


def test_map_step_over_100_items_keeps_order(db_url: str) -> None:
    class Mapper:
        @swf.step()
        def items(inputs: dict[str, Any]) -> list[int]:
            return list(range(100))

        @swf.step(map_over="items")
        def square(inputs: dict[str, Any]) -> int:
            assert inputs["item"] == inputs["index"]
            time.sleep(0.001 * (inputs["item"] % 3))  # finish out of order
            return inputs["item"] ** 2

        @swf.step(depends_on=["square"])
        def total(inputs: dict[str, Any]) -> int:
            return sum(inputs["square"])

    result = Executor.execute(Mapper, {}, db_url)
    assert result.output == {"total": sum(i * i for i in range(100))}
    with psycopg.connect(db_url) as conn:
        out = conn.execute("SELECT output FROM swf.step_states WHERE step_name = 'square'"
                           ).fetchone()[0]
    assert out == [i * i for i in range(100)]


def test_map_over_empty_list_and_over_non_list(db_url: str) -> None:
    class Empty:
        @swf.step(map_over="run")
        def each(inputs: dict[str, Any]) -> int:
            raise AssertionError("no items")

    assert Executor.execute(Empty, [], db_url).output == {"each": []}
    with pytest.raises(WorkflowFailed, match="expected a list, got object") as info:
        Executor.execute(Empty, {"not": "a list"}, db_url)
    assert info.value.step == "each"


def test_duplicate_completion_is_ignored(db_url: str) -> None:
    """A report delivered twice completes the step once and dispatches dependents once."""
    db = resolve(db_url)

    class Pair:
        @swf.step()
        def first(inputs: dict[str, Any]) -> int:
            return 1

        @swf.step(depends_on=["first"])
        def second(inputs: dict[str, Any]) -> int:
            return 2

    wf = definition.load(Pair)
    run_id = coordinator.start_run(db, wf, {})
    [(task_id, task)] = coordinator.claim_local_tasks(db, run_id, 10)
    assert task["step"] == "first"
    assert coordinator.complete_task(db, task_id, 1) == "completed"
    assert coordinator.complete_task(db, task_id, 99) == "ignored"
    assert coordinator.fail_task(db, task_id, "late failure") == "ignored"
    assert coordinator.start_task(db, task_id) is None  # a redelivered message does not run
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT step_name, count(*) FROM swf.step_tasks GROUP BY 1 "
                            "ORDER BY 1").fetchall()
        out = conn.execute("SELECT output FROM swf.step_states WHERE step_name = 'first'"
                           ).fetchone()[0]
    assert rows == [("first", 1), ("second", 1)]
    assert out == 1


def test_unserialisable_output_fails_the_attempt(db_url: str) -> None:
    class Bad:
        @swf.step(max_attempts=1)
        def bad(inputs: dict[str, Any]) -> Any:
            return object()

    with pytest.raises(WorkflowFailed, match="not JSON-serialisable"):
        Executor.execute(Bad, {}, db_url)


def test_start_returns_at_once_and_drives_local_steps(db_url: str) -> None:
    run_id = Executor.start(Diamond, {"n": 2}, db_url)
    assert isinstance(run_id, str)
    assert Executor.wait(run_id, db_url, timeout=30_000).output["join"]["sum"] == 7


# -- validation: each error, nothing written ------------------------------------------------


def _no_rows(url: str) -> None:
    assert _count(url, "runs") == 0
    assert _count(url, "flows") == 0


def _entries(*steps: tuple[str, list[str]]) -> type:
    def fn(inputs: dict[str, Any]) -> None:
        return None

    entries = [(name, fn, {"depends_on": deps}) for name, deps in steps]

    class W:
        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return entries

    return W


@pytest.mark.parametrize(("steps", "error", "match"), [
    ((("a", []), ("b", ["nope"])), UnknownDependencyError, "unknown step 'nope'"),
    ((("r", []), ("a", ["r", "c"]), ("b", ["a"]), ("c", ["b"])), CycleError, "->"),
    ((("a", []), ("a", [])), DuplicateStepError, "defined twice"),
    ((("a", ["b"]), ("b", ["a"])), CycleError, "a -> b -> a"),
])
def test_validation_errors_write_nothing(db_url: str, steps: Any, error: type, match: str
                                         ) -> None:
    with pytest.raises(error, match=match):
        Executor.execute(_entries(*steps), {}, db_url)
    _no_rows(db_url)


def test_other_definition_errors(db_url: str) -> None:
    class Nothing:
        pass

    with pytest.raises(WorkflowDefinitionError, match="lists no steps"):
        Executor.execute(Nothing, {}, db_url)

    class PlainDistributed:
        @swf.step(execution="distributed")
        def plain(inputs: dict[str, Any]) -> None:
            return None

    with pytest.raises(StepFunctionError, match="needs a registered Celery task"):
        Executor.execute(PlainDistributed, {}, db_url)
    class Typo:
        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return [("a", print, {"depends_on": [], "retries": 3})]

    with pytest.raises(WorkflowDefinitionError, match=r"unknown step option\(s\) \['retries'\]"):
        Executor.execute(Typo, {}, db_url)
    with pytest.raises(WorkflowDefinitionError, match="execution must be"):
        swf.step(execution="remote")
    with pytest.raises(WorkflowDefinitionError, match="max_attempts"):
        swf.step(max_attempts=0)
    with pytest.raises(WorkflowDefinitionError, match="control characters"):
        swf.step(queue="gpu\nworkers")
    with pytest.raises(RunInputError, match="run input"):
        Executor.execute(Diamond, {"n": object()}, db_url)
    _no_rows(db_url)


def test_workflow_events_arrive_through_listen(db_url: str) -> None:
    """The messaging API's listen("workflow_events") hears the engine's events, as stored
    messages whose bodies are the events."""
    listener = swf.listen("workflow_events", db_url)
    try:
        result = Executor.execute(Diamond, {"n": 1}, db_url)
        events = []
        while True:
            note = listener.get(timeout=2)
            assert note is not None, f"no run-completed event among {events}"
            assert note.kind == "message"
            event = swf.get_message("workflow_events", note.message_id, db_url).body
            assert note.json() == {"swf_message_id": note.message_id, **event}
            events.append(event)
            if event == {"run_id": result.run_id, "step": None, "status": "completed"}:
                break
    finally:
        swf.unlisten(listener, db_url)
    assert {"run_id": result.run_id, "step": "join", "status": "completed"} in events


def test_expire_tasks_fails_overdue_attempts_of_any_run(db_url: str) -> None:
    db = resolve(db_url)
    options = steps.parse_options({"timeout": 0.5, "max_attempts": 2, "retry_delay": 0},
                                  where="test")
    wf = definition.build("tests.overdue", [("slow", lambda inputs: None, options)])
    run_id = coordinator.start_run(db, wf, {})
    [(task_id, _task)] = coordinator.claim_local_tasks(db, run_id, 1)
    assert coordinator.expire_tasks(db) == 0  # not yet due
    time.sleep(0.6)
    assert coordinator.expire_tasks(db) == 1  # what workers run every 30 s, for every run
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT attempt, status, error FROM swf.step_tasks").fetchone()
    assert row == (2, "queued", "timed out after 0.5 s")
    assert coordinator.complete_task(db, task_id, "late") == "ignored"


def test_repo_may_be_an_engine_or_a_pool(db_url: str) -> None:
    import sqlalchemy
    from psycopg_pool import ConnectionPool

    engine = sqlalchemy.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        assert Executor.execute(Diamond, {"n": 2}, engine).output["join"]["sum"] == 7
    finally:
        engine.dispose()
    with ConnectionPool(db_url, min_size=1, max_size=4) as pool:
        result = Executor.execute(Diamond, {"n": 3}, pool)
        assert result.output["join"]["sum"] == 10
        assert swf.get_run_status(result.run_id, pool).status == "completed"


def test_a_module_listing_steps_is_a_workflow(db_url: str) -> None:
    import types

    module = types.ModuleType("pipeline_module")

    @swf.step()
    def load(inputs: dict[str, Any]) -> list[int]:
        return [1, 2, 3]

    @swf.step(depends_on=["load"])
    def total(inputs: dict[str, Any]) -> int:
        return sum(inputs["load"])

    module.load = load  # type: ignore[attr-defined]
    module.total = total  # type: ignore[attr-defined]
    module.helper = lambda: None  # type: ignore[attr-defined]  # not a step: ignored
    result = Executor.execute(module, {}, db_url)
    assert result.output == {"total": 6}
    assert swf.get_run_status(result.run_id, db_url).workflow_slug == "pipeline_module"
