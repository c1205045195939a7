"""Named SQL: the ``-- name: …`` blocks of a package's ``.sql`` file, read once.

Python code calls queries by name and never assembles SQL from user strings; identifiers
that must be dynamic are validated and passed through ``psycopg.sql.Identifier``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib.resources import files

from swf_celery.errors import ConfigurationError

_QUERY_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@functools.cache
def load_queries(package: str, filename: str = "queries.sql") -> Mapping[str, str]:
    """Return ``{name: sql}`` for the ``-- name: …`` blocks of ``filename`` in ``package``."""
    text = files(package).joinpath(filename).read_text(encoding="utf-8")
    queries: dict[str, str] = {}
    matches = list(_QUERY_NAME.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        if match.group(1) in queries:
            raise ConfigurationError(
                f"{package}/{filename}: query {match.group(1)!r} defined twice")
        queries[match.group(1)] = text[match.end():end].strip()
    return queries
