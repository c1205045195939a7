"""``make bench``: run every ``benchmarks/bench_*.py`` and write ``docs/benchmarks.md``.

Each benchmark module exposes ``run(database_url: str) -> str`` returning a Markdown
section (its tables, the numbers measured in this run, and notes). Sections appear in
module-name order. ``python -m benchmarks.run bench_broker`` runs only the named ones
and rewrites only their sections in the document.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import re
import sys
from pathlib import Path

from benchmarks.stats import LOADED_SHARE
from swf_celery import db
from swf_celery.ops import migrate

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
_SECTION = re.compile(r"<!-- section: (bench_\w+) -->\n(.*?)<!-- /section -->\n", re.S)


def machine() -> str:
    """One line describing the machine the numbers were measured on."""
    cores = os.cpu_count()
    mem = ""
    try:
        kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal"))
                 .split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{platform.system()} {platform.machine()}, {cores} cores{mem}, Python " \
           f"{platform.python_version()}"


def main(argv: list[str]) -> None:
    # bench_*.py modules that define run(); the others (e.g. bench_app) are worker apps.
    # Modules marked ``LONG = True`` (an hour of churn) run only when named.
    names = argv or sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py")
                           if "\ndef run(" in p.read_text()
                           and "\nLONG = True" not in p.read_text())
    url = db.database_url(start_embedded=True).url
    migrate.migrate(url)
    sections: dict[str, str] = {}
    if DOC.exists():
        sections = {m.group(1): m.group(2) for m in _SECTION.finditer(DOC.read_text())}
    for name in names:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        sections[name] = module.run(url).rstrip() + "\n"
    ran = "" if not argv else f" (sections run: {', '.join(names)})"
    header = (
        "# Benchmarks\n\n"
        "Produced by `make bench` (`python -m benchmarks.run [bench_name ...]`). Every ratio "
        "compares systems measured in the same run on the same machine. In a section with a "
        "\"Machine load\" line, each ratio is the median of the per-round ratios over at "
        "least 3 rounds that alternate the systems' order, every round shown; that line gives "
        "the load at the section's start and end, and begins with **LOADED MACHINE** when "
        f"more than {LOADED_SHARE:.0%} of the cores were busy at its start.\n\n"
        f"Last run: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}"
        f"{ran}.\n\n"
    )
    body = "".join(f"<!-- section: {k} -->\n{v}<!-- /section -->\n\n"
                   for k, v in sorted(sections.items()))
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(header + body)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main(sys.argv[1:])
