"""Run the GPU pipeline once: ``python -m examples.gpu_pipeline.run``.

Migrates the database, starts one worker per queue (``-Q cpu_workers`` and
``-Q gpu_workers``, as you would on a CPU box and a GPU box), runs the workflow and prints
which worker ran each step. ``--no-workers`` uses workers you started yourself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from examples.gpu_pipeline.app import DATABASE_URL, GpuPipeline
from swf_celery import Executor, get_run_status
from swf_celery.ops import migrate
from swf_celery.testing import worker_process

APP = "examples.gpu_pipeline.app"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--no-workers", action="store_true",
                        help="do not start workers (use the ones you started)")
    args = parser.parse_args(argv)

    migrate.migrate(DATABASE_URL)
    with contextlib.ExitStack() as stack:
        if not args.no_workers:
            for queue, name in (("cpu_workers", "cpu@%h"), ("gpu_workers", "gpu@%h")):
                print(f"starting: celery -A {APP} worker -Q {queue} -n {name}")
                stack.enter_context(worker_process(APP, queues=[queue], hostname=name,
                                                   concurrency=2))
        result = Executor.execute(GpuPipeline, {"images": args.images}, DATABASE_URL,
                                  timeout=60_000)
    status = get_run_status(result.run_id, DATABASE_URL)
    print(f"run {result.run_id} {status.status}")
    for step in status.steps:
        resources = json.dumps(step.resources) if step.resources else ""
        print(f"  {step.name:<11} {step.status:<10} queue={step.queue:<12} {resources}")
    print(f"result: {json.dumps(result.output, sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
