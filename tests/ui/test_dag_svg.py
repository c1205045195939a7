"""The DAG drawing: layered layout and escaping (pure, no database)."""

from __future__ import annotations

import re

from swf_celery.ui import dag_svg

DIAMOND = {"fetch": [], "parse": ["fetch"], "enrich": ["fetch"], "publish": ["parse", "enrich"]}


def test_layout_puts_each_step_one_column_right_of_its_deepest_dependency() -> None:
    places = dag_svg.layout(DIAMOND)
    columns = {name: x for name, (x, _) in places.items()}
    assert columns["fetch"] < columns["parse"] == columns["enrich"] < columns["publish"]
    assert places["parse"][1] != places["enrich"][1]  # one column, two rows


def test_every_step_and_edge_is_drawn_with_its_state() -> None:
    svg = dag_svg.render(DIAMOND, {"fetch": "completed", "parse": "started"}, link="/runs/x")
    steps = re.findall(r'<g class="step state-(\w+)[^"]*" data-step="([^"]+)"', svg)
    assert sorted(steps) == [("completed", "fetch"), ("created", "enrich"),
                             ("created", "publish"), ("started", "parse")]
    edges = re.findall(r'data-from="([^"]+)" data-to="([^"]+)"', svg)
    assert sorted(edges) == [("enrich", "publish"), ("fetch", "enrich"), ("fetch", "parse"),
                             ("parse", "publish")]
    assert 'href="/runs/x?step=parse#step"' in svg


def test_step_names_are_escaped() -> None:
    svg = dag_svg.render({'<img src=x onerror="1">': [], "b": ['<img src=x onerror="1">']})
    assert "<img" not in svg
    assert "&lt;img src=x onerror=&quot;1&quot;&gt;" in svg
