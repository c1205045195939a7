"""A goal decomposed into a task graph, previewed, approved and executed with live progress.

    python -m examples.goal_to_dag.run "Train a churn model" [--yes]

Uses the embedded PostgreSQL unless SWF_DATABASE_URL is set. The decomposer here is the
rule-based one shipped with the library; swap in ``LLMDecomposer(your_client)`` to let a
model plan (see README.md). Steps are plain functions, so they run in this process.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from swf_celery import Orchestrator, db, get_run_status, listen
from swf_celery.goals.decomposers import EXAMPLE_RULES, RuleDecomposer
from swf_celery.ops import migrate


def do_task(inputs: dict[str, Any]) -> str:
    """Every task of this example: pretend to work, then say what was done."""
    time.sleep(0.3)
    done = sorted(k for k in inputs if k != "run")
    return f"done after {', '.join(done) or 'nothing'}"


def main(argv: list[str]) -> int:
    console = Console()
    goal = next((a for a in argv if not a.startswith("-")), "Train a churn model")
    url = db.database_url(start_embedded=True).url
    migrate.migrate(url)

    graph = Orchestrator.decompose_goal(goal, RuleDecomposer(EXAMPLE_RULES), url)
    table = Table(title=f"Task graph {graph['id']} for: {goal}")
    table.add_column("task")
    table.add_column("depends on")
    table.add_column("description")
    for task in graph["flat_tasks"]:
        table.add_row(task["id"], ", ".join(task["depends_on"]) or "-", task["description"])
    console.print(table)

    if "--yes" not in argv and not console.input("Approve and run? [y/N] ").lower().startswith(
            "y"):
        console.print("not approved; the graph stays stored and can be run later by its id")
        return 0
    Orchestrator.approve_task_graph(graph["id"], url)

    events = listen("workflow_events", url)
    outcome: dict[str, Any] = {}

    def execute() -> None:
        try:
            outcome["result"] = Orchestrator.execute_goal(
                graph["id"], None, {"*": do_task}, url, require_approval=True)
        except Exception as exc:  # shown below
            outcome["error"] = exc

    worker = threading.Thread(target=execute)
    worker.start()
    total = len(graph["flat_tasks"])
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} tasks"), console=console) as bar:
        progress = bar.add_task("running", total=total)
        while worker.is_alive():
            events.get(timeout=0.5)  # woken by the engine's events; the timeout is a floor
            run_id = Orchestrator.get_task_graph(graph["id"], url)["last_run_id"]
            if run_id:
                status = get_run_status(run_id, url)
                bar.update(progress, completed=status.completed_steps,
                           description=status.status)
    worker.join()
    events.close()
    if "error" in outcome:
        console.print(f"[red]failed:[/red] {outcome['error']}")
        return 1
    result = outcome["result"]
    console.print(f"run {result.run_id} completed: {result.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
