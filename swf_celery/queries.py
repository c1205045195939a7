"""Named SQL queries loaded from ``.sql`` files shipped in the package.

A file holds blocks that start with ``-- name: <query_name>``; :func:`load` returns a
mapping of name to SQL text, read once through :mod:`importlib.resources`. Python code
calls queries by name and never assembles SQL from user strings.
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@functools.cache
def load(package: str, filename: str) -> dict[str, str]:
    """Return ``{name: sql}`` for the named blocks of ``filename`` in ``package``."""
    text = files(package).joinpath(filename).read_text(encoding="utf-8")
    queries: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end():end].strip()
        if match.group(1) in queries:
            raise ValueError(f"{package}/{filename}: query {match.group(1)!r} defined twice")
        queries[match.group(1)] = body
    return queries
