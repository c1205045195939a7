"""The SQL's layout: every function defined once, migrations hold tables, layers hold in SQL."""

from __future__ import annotations

import re
from importlib.resources import files

from swf_celery.db import schema

_DEFINED = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+swf\.(\w+)\s*\(", re.I)
#: The broker's function files (sql/functions/): they may name only each other's objects,
#: the privilege checks and the NOTIFY helpers every layer shares (privileges.sql,
#: notifications.sql: as every Python layer uses db).
BROKER_FILES = {"limits", "queues", "revokes"}
SHARED_FILES = {"notifications", "privileges"}


def _defined() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for file in schema.function_files():
        for name in _DEFINED.findall(file.sql):
            found.setdefault(name, []).append(file.name)
    return found


def test_every_function_is_defined_once_and_only_in_a_function_file() -> None:
    defined = _defined()
    assert defined and all(len(files) == 1 for files in defined.values()), {
        name: files for name, files in defined.items() if len(files) > 1}
    for migration in schema.migrations():
        assert not re.search(r"CREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|TRIGGER|VIEW)",
                             migration.sql, re.I), migration.name


def test_the_broker_sql_names_no_workflow_result_or_goal_object() -> None:
    broker_functions = {name for name, (file,) in _defined().items()
                        if file in BROKER_FILES | SHARED_FILES}
    engine_functions = set(_defined()) - broker_functions
    engine_tables = {"flows", "flow_steps", "runs", "step_states", "step_tasks", "task_results",
                     "group_results", "chords", "chord_parts", "chord_additions", "task_graphs",
                     "channels"}
    broker_sql = {f"sql/functions/{file.name}.sql": file.sql for file in schema.function_files()
                  if file.name in BROKER_FILES}
    broker_sql |= {f"transport/{entry.name}": entry.read_text(encoding="utf-8")
                   for entry in files("swf_celery.transport").iterdir()
                   if entry.name.endswith(".sql")}
    assert len(broker_sql) > 2
    for name, text in broker_sql.items():
        named = set(re.findall(r"\bswf\.(\w+)", text))
        assert not named & (engine_functions | engine_tables), (name, named & engine_functions)


def test_every_notify_goes_through_the_notification_helpers() -> None:
    # One way to NOTIFY (sql/functions/notifications.sql): a hint is skipped while the
    # notification queue is too full, so no commit of the library fails for a slow listener.
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    texts = {f"sql/functions/{f.name}.sql": f.sql for f in schema.function_files()
             if f.name != "notifications"}
    for folder in ("swf_celery", "transport"):
        for path in (root / folder).rglob("*"):
            if path.suffix in (".sql", ".py"):
                texts[str(path.relative_to(root))] = path.read_text(encoding="utf-8")
    assert len(texts) > 50
    call = re.compile(r"\bpg_notify\s*\(", re.I)
    statement = re.compile(r"^\s*NOTIFY\s", re.I | re.M)
    offenders = [name for name, text in texts.items()
                 if call.search(text) or (name.endswith(".sql") and statement.search(text))]
    assert offenders == []
