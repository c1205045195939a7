"""A Celery app whose workflow steps run on two queues: ``cpu_workers`` and ``gpu_workers``.

The broker is PostgreSQL (``swf://``): ``$SWF_DATABASE_URL``, else the embedded server.
Steps that need a GPU say so with ``resources={"gpu": True}``; the setting
``swf_resource_queues`` maps that resource to the ``gpu_workers`` queue, so only the
workers started with ``-Q gpu_workers`` (the machines with GPUs) run them.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from celery.signals import celeryd_init

import swf_celery as swf
from swf_celery import db

# $SWF_DATABASE_URL, else the embedded server (started if needed).
DATABASE_URL = db.database_url(start_embedded=True).url
SWF_URL = db.broker_url(DATABASE_URL)

app = Celery("gpu_pipeline", broker=SWF_URL, backend=SWF_URL)
app.conf.update(
    task_acks_late=True,                       # a crashed worker's step runs again
    worker_prefetch_multiplier=1,              # long GPU steps: take one at a time
    swf_resource_queues={"gpu": "gpu_workers"},  # resource -> queue
)

#: The name of the worker this process belongs to (``-n cpu@host``), shown in the output.
worker_name = "?"


@celeryd_init.connect
def _remember_worker_name(sender: str | None = None, **_: Any) -> None:
    global worker_name
    worker_name = sender or "?"


@swf.step(queue="cpu_workers")
@app.task
def download(inputs: dict[str, Any]) -> dict[str, Any]:
    """Fetch the dataset (CPU, network bound)."""
    time.sleep(0.3)
    return {"images": inputs["run"]["images"], "worker": worker_name}


@swf.step(depends_on=["download"], queue="cpu_workers")
@app.task
def preprocess(inputs: dict[str, Any]) -> dict[str, Any]:
    """Decode and resize (CPU)."""
    time.sleep(0.3)
    return {"batches": -(-inputs["download"]["images"] // 32), "worker": worker_name}


@swf.step(depends_on=["preprocess"], resources={"gpu": True})
@app.task
def train(inputs: dict[str, Any]) -> dict[str, Any]:
    """Fit the model (GPU): routed to gpu_workers through the resource map."""
    time.sleep(0.5)
    return {"loss": round(1.0 / inputs["preprocess"]["batches"], 4), "worker": worker_name}


@swf.step(depends_on=["preprocess"], resources={"gpu": True})
@app.task
def embed(inputs: dict[str, Any]) -> dict[str, Any]:
    """Compute embeddings (GPU), in parallel with train."""
    time.sleep(0.5)
    return {"vectors": inputs["preprocess"]["batches"] * 32, "worker": worker_name}


@swf.step(depends_on=["train", "embed"], queue="cpu_workers")
@app.task
def evaluate(inputs: dict[str, Any]) -> dict[str, Any]:
    """Score the model against the embeddings (CPU)."""
    return {"loss": inputs["train"]["loss"], "vectors": inputs["embed"]["vectors"],
            "ran_on": {"train": inputs["train"]["worker"], "embed": inputs["embed"]["worker"],
                       "evaluate": worker_name}}


class GpuPipeline:
    """download -> preprocess -> (train | embed) on GPUs -> evaluate."""

    download = download
    preprocess = preprocess
    train = train
    embed = embed
    evaluate = evaluate
