"""Fixtures of the goal tests (decomposers, orchestrator).

The decomposer tests need no database; the orchestrator's use ``db_url`` from
tests/conftest.py. Helpers are in :mod:`tests.helpers`.
"""
