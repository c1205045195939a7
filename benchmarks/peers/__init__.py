"""The peers' side of ``bench_peers``: Procrastinate and PgQueuer, each in a script run by
``.venv-peers/bin/python`` (``make peers-venv``), so that their libraries never load into
the project's environment. Only these modules import them; nothing of the project is
imported here.
"""
