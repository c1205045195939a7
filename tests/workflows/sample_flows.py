"""Workflows several test modules run: :class:`Diamond` (four local steps) and :func:`chain`.

Importing them from here (not from another test module) keeps each test module's own
fixtures and tests out of the importer's namespace.
"""

from __future__ import annotations

from typing import Any

import swf_celery as swf
from swf_celery.workflows import definition, steps


class Diamond:
    @swf.step()
    def fetch(inputs: dict[str, Any]) -> int:
        return inputs["run"]["n"]

    @swf.step(depends_on=["fetch"])
    def left(inputs: dict[str, Any]) -> int:
        return inputs["fetch"] + 1

    @swf.step(depends_on=["fetch"])
    def right(inputs: dict[str, Any]) -> int:
        return inputs["fetch"] * 2

    @swf.step(depends_on=["left", "right"])
    def join(inputs: dict[str, Any]) -> dict[str, Any]:
        return {"sum": inputs["left"] + inputs["right"], "saw": sorted(inputs)}


def _noop(inputs: dict[str, Any]) -> int:
    return len(inputs)


def chain(*names: str, queue: str | None = None) -> definition.WorkflowDef:
    """a -> b -> c ... as local steps (or distributed on an unconsumed queue)."""
    entries = []
    for i, name in enumerate(names):
        fn: Any = _noop
        opts: dict[str, Any] = {"depends_on": [names[i - 1]] if i else []}
        if queue:
            from tests.workflows import engine_app

            fn, opts["queue"] = engine_app.noop, queue
        entries.append((name, fn, steps.parse_options(opts, where="test")))
    return definition.build("tests.chain", entries)
