"""``swf-celery keys``: hold, list and release a flow key from the shell."""

from __future__ import annotations

import json

import pytest

import swf_celery as swf
from tests.helpers import run_cli

pytestmark = pytest.mark.db


def test_hold_list_and_release_a_key(db_url: str) -> None:
    held = run_cli("keys", "hold", "api:partner", "--seconds", "60", "--reason", "429",
                   database=db_url)
    assert held.returncode == 0 and "api:partner held until" in held.stdout, held.stderr
    listed = run_cli("keys", "list", "--json", database=db_url)
    [entry] = json.loads(listed.stdout)
    assert entry["key"] == "api:partner" and entry["reason"] == "429"
    assert swf.release_key("api:partner", db_url) is True
    assert swf.held_keys(db_url) == []
