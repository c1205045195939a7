"""A workflow's DAG drawn as SVG on the server: layered layout, one box per step.

Columns are the layers of :func:`swf_celery.workflows.dag.layers` (a step sits one column
right of its deepest dependency); within a column steps keep definition order, centred
vertically. Edges are curves from a dependency's right side to the dependent's left side.
Each step is a link to its details and carries ``data-step`` and a ``state-<status>``
class, so the page's script recolours it live; without the script the SVG is a picture
of the state when the page was served. Every name is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from urllib.parse import quote

from swf_celery.workflows import dag

BOX_W, BOX_H = 168, 40
COL_GAP, ROW_GAP = 64, 18
PAD = 12
#: Longest step label drawn in a box (the full name is in the tooltip).
LABEL_CHARS = 22


def _label(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else name[:LABEL_CHARS - 1] + "\u2026"


def layout(deps: Mapping[str, Sequence[str]]) -> dict[str, tuple[int, int]]:
    """``{step: (x, y)}`` of each box's top-left corner."""
    columns = dag.layers({name: list(d) for name, d in deps.items()})
    tallest = max((len(col) for col in columns), default=0)
    height = tallest * (BOX_H + ROW_GAP)
    places: dict[str, tuple[int, int]] = {}
    for c, column in enumerate(columns):
        top = PAD + (height - len(column) * (BOX_H + ROW_GAP)) // 2
        for r, name in enumerate(column):
            places[name] = (PAD + c * (BOX_W + COL_GAP), top + r * (BOX_H + ROW_GAP))
    return places


def render(deps: Mapping[str, Sequence[str]], statuses: Mapping[str, str] | None = None, *,
           link: str | None = None, selected: str | None = None) -> str:
    """The SVG of a graph ``{step: [dependencies]}``; ``statuses`` colour the boxes.

    ``link``: a URL prefix to which ``?step=<name>`` is appended for each box (none: no links).
    """
    statuses = statuses or {}
    places = layout(deps)
    width = max((x for x, _ in places.values()), default=0) + BOX_W + PAD
    height = max((y for _, y in places.values()), default=0) + BOX_H + PAD
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" role="img" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'aria-label="workflow graph of {len(places)} steps">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
           'class="arrowhead"/></marker></defs>', '<g class="edges">']
    for name, depends_on in deps.items():
        x2, y2 = places[name]
        for dep in depends_on:
            x1, y1 = places[dep]
            sx, sy, ex, ey = x1 + BOX_W, y1 + BOX_H // 2, x2, y2 + BOX_H // 2
            mid = (sx + ex) // 2
            out.append(f'<path class="edge" data-from="{escape(dep)}" data-to="{escape(name)}" '
                       f'd="M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}" '
                       'marker-end="url(#arrow)"/>')
    out.append('</g><g class="steps">')
    for name, (x, y) in places.items():
        status = statuses.get(name, "created")
        classes = f"step state-{escape(status)}" + (" selected" if name == selected else "")
        box = (f'<g class="{classes}" data-step="{escape(name)}">'
               f'<title>{escape(name)}: {escape(status)}</title>'
               f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6"/>'
               f'<text x="{x + 10}" y="{y + 17}" class="name">{escape(_label(name))}</text>'
               f'<text x="{x + 10}" y="{y + 32}" class="status">{escape(status)}</text></g>')
        if link is not None:
            href = escape(f"{link}?step={quote(name, safe='')}#step")
            box = f'<a href="{href}">{box}</a>'
        out.append(box)
    out.append("</g></svg>")
    return "".join(out)
