"""The seed's workflow form over the plain tasks of :mod:`tests.workflows.plain_app`."""

from __future__ import annotations

from typing import Any

from swf_celery.workflows.definition import WorkflowDef, build
from swf_celery.workflows.steps import parse_options
from tests.workflows import plain_app as tasks


class SeedDiamond:
    """A diamond across two queues, declared as the seed does."""

    __workflow_slug__ = "seed_diamond"

    @staticmethod
    def __workflow_steps__() -> list[tuple[str, Any, dict[str, Any]]]:
        return [
            ("fetch", tasks.fetch, {"depends_on": [], "queue": "plain_cpu"}),
            ("left", tasks.left, {"depends_on": ["fetch"], "queue": "plain_cpu"}),
            ("right", tasks.right, {"depends_on": ["fetch"], "queue": "plain_gpu"}),
            ("join", tasks.join, {"depends_on": ["left", "right"], "queue": "plain_gpu"}),
        ]


def single(slug: str, task: Any, **options: Any) -> WorkflowDef:
    """A one-step workflow running ``task`` on ``plain_cpu``."""
    options.setdefault("queue", "plain_cpu")
    return build(slug, [("only", task, parse_options(options, where=slug))])


def pair(slug: str, first: tuple[Any, dict[str, Any]],
         second: tuple[Any, dict[str, Any]]) -> WorkflowDef:
    """Two independent steps ``a`` and ``b`` (both roots), on ``plain_cpu``."""
    entries = []
    for name, (task, options) in (("a", first), ("b", second)):
        entries.append((name, task, parse_options({"queue": "plain_cpu", **options},
                                                  where=f"{slug} step {name}")))
    return build(slug, entries)


def layered(slug: str, steps: int, width: int = 10) -> WorkflowDef:
    """``steps`` no-op steps in layers of ``width``, each depending on the whole layer
    before it (the benchmark's shape)."""
    entries = []
    previous: list[str] = []
    for layer in range(0, steps, width):
        names = [f"s{i}" for i in range(layer, min(steps, layer + width))]
        for name in names:
            entries.append((name, tasks.noop, parse_options(
                {"depends_on": previous, "queue": "plain_cpu"}, where=name)))
        previous = names
    return build(slug, entries)
