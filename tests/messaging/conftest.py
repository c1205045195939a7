"""Fixtures of the messaging tests (channels, send, listen).

They need only the database fixtures of tests/conftest.py (``db_url``, and
``private_server`` for restarts); helpers are in :mod:`tests.helpers`.
"""
