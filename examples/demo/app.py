"""``make demo``: a workflow end to end on a real Celery worker over PostgreSQL.

``python -m examples.demo.app`` uses ``$SWF_DATABASE_URL`` or starts the embedded server,
migrates it, starts ``celery -A examples.demo.app worker`` on the ``swf://`` broker and
result backend, runs a six-step workflow (one step fanning out to four parallel ones that
join again), draws its progress live from the engine's ``workflow_events``, prints the
result and stops the worker with a warm shutdown. This module is also the Celery app the
worker loads, so what the demo shows is exactly what ``celery -A app worker`` runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from celery import Celery

import swf_celery as swf
from swf_celery import db

QUEUE = "demo_workers"


_DB = os.environ.get("SWF_DATABASE_URL", "postgresql://postgres@127.0.0.1/swf")
app = Celery("swf_demo", broker=db.broker_url(_DB), backend=db.broker_url(_DB))
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1,
                worker_hijack_root_logger=False, task_default_queue=QUEUE)


def _work(seconds: float) -> None:
    time.sleep(seconds)  # stands in for real work, so progress is visible


@swf.step(queue=QUEUE)
@app.task
def fetch(inputs: dict[str, Any]) -> list[str]:
    """Load the batch of documents named in the run input."""
    _work(0.6)
    return [f"doc-{i}" for i in range(inputs["run"]["documents"])]


@swf.step(depends_on=["fetch"], queue=QUEUE)
@app.task
def tokenize(inputs: dict[str, Any]) -> int:
    _work(1.2)
    return sum(len(doc) for doc in inputs["fetch"])


@swf.step(depends_on=["fetch"], queue=QUEUE)
@app.task
def classify(inputs: dict[str, Any]) -> dict[str, str]:
    _work(1.6)
    return {doc: ("invoice" if i % 2 else "letter") for i, doc in enumerate(inputs["fetch"])}


@swf.step(depends_on=["fetch"], queue=QUEUE)
@app.task
def summarize(inputs: dict[str, Any]) -> str:
    _work(1.0)
    return f"{len(inputs['fetch'])} documents"


@swf.step(depends_on=["fetch"], queue=QUEUE)
@app.task
def index(inputs: dict[str, Any]) -> int:
    _work(1.4)
    return len(inputs["fetch"])


@swf.step(depends_on=["tokenize", "classify", "summarize", "index"], queue=QUEUE)
@app.task
def publish(inputs: dict[str, Any]) -> dict[str, Any]:
    _work(0.4)
    kinds = sorted(set(inputs["classify"].values()))
    return {"summary": inputs["summarize"], "tokens": inputs["tokenize"],
            "indexed": inputs["index"], "kinds": kinds}


class DocumentPipeline:
    """fetch -> (tokenize | classify | summarize | index) -> publish."""

    fetch = fetch
    tokenize = tokenize
    classify = classify
    summarize = summarize
    index = index
    publish = publish


_STYLE = {"completed": "green", "failed": "red", "cancelled": "yellow", "started": "blue",
          "created": "dim", "ready": "cyan", "in_progress": "blue"}


def _view(status: Any, started: float) -> Any:
    """The live display: an overall bar and one row per step."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table("step", "status", "queue", "attempts", box=None, pad_edge=False)
    for s in status.steps:
        style = _STYLE.get(s.status, "")
        table.add_row(s.name, f"[{style}]{s.status}[/]" if style else s.status,
                      s.queue or "local", str(s.attempts))
    header = Table.grid(padding=(0, 1))
    header.add_row(f"run {status.run_id[:8]}", ProgressBar(total=status.total_steps,
                                                            completed=status.completed_steps,
                                                            width=30),
                   f"{status.completed_steps}/{status.total_steps} steps",
                   f"{time.monotonic() - started:4.1f} s", status.status)
    return Group(header, table)


def run_demo(url: str, documents: int = 6) -> swf.RunResult:
    """Run the demo workflow on ``url`` (workers must consume ``demo_workers``)."""
    from rich.console import Console
    from rich.live import Live

    console = Console(highlight=False)
    started = time.monotonic()
    # Listen before starting, so not one event of the run can be missed.
    with swf.listen("workflow_events", url) as events:
        run_id = swf.Executor.start(DocumentPipeline, {"documents": documents}, url)
        status = swf.get_run_status(run_id, url)
        with Live(_view(status, started), console=console, refresh_per_second=10) as live:
            while status.status in ("in_progress", "paused"):
                note = events.get(timeout=0.5)  # the timeout only ticks the clock
                if note is not None and note.payload is not None and \
                        note.json().get("run_id") != run_id:
                    continue
                status = swf.get_run_status(run_id, url)
                live.update(_view(status, started))
    console.print()
    return swf.Executor.wait(run_id, url, timeout=10_000)


def main() -> int:
    """Migrate, start a worker, run the workflow with a live view, stop the worker."""
    from rich.console import Console

    from swf_celery.ops import migrate
    from swf_celery.testing import read_log, worker_process

    console = Console(highlight=False)
    url = db.database_url(start_embedded=True).url
    version = migrate.migrate(url).version
    console.print(f"database {db.redact(url)} (schema version {version})", soft_wrap=True)
    app.conf.update(broker_url=db.broker_url(url), result_backend=db.broker_url(url))
    console.print(f"starting: celery -A examples.demo.app worker -Q {QUEUE} --concurrency 4")
    with worker_process("examples.demo.app", queues=[QUEUE], concurrency=4,
                        env={"SWF_DATABASE_URL": url},
                        hostname="demo@%h") as worker:
        console.print(f"worker ready (pid {worker.pid})")
        try:
            result = run_demo(url)
        except swf.WorkflowFailed as exc:
            console.print(f"[red]run failed[/]: {exc}")
            console.print(read_log(worker)[-3000:], markup=False)
            return 1
        console.print("stopping the worker (warm shutdown)")
    console.print(f"worker stopped (exit code {worker.returncode})")
    print(f"result: {json.dumps(result.output, sort_keys=True)}")
    print(f"see it in the web console: .venv/bin/swf-celery ui, then open "
          f"http://127.0.0.1:8800/runs/{result.run_id}")
    return 0


if __name__ == "__main__":
    # Run the copy imported under its real name: run as __main__, Celery would name the
    # tasks "swf_demo.fetch" here and "examples.demo.app.fetch" in the worker.
    from examples.demo.app import main as _main

    sys.exit(_main())
