"""CPU time by role (client, worker, pool children, servers), read from ``/proc``.

On a machine with fewer cores than busy processes a throughput benchmark measures CPU cost:
tasks/s is at most cores / (CPU seconds per task, summed over every process involved). This
tells which process spends it. Linux only; elsewhere every role reads 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: Server processes by their command name (``/proc/PID/comm``), as the table names them.
SERVERS = {"postgres": "PostgreSQL", "redis-server": "redis-server", "beam.smp": "RabbitMQ"}


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def backend_cpu(postmaster: int | None) -> dict[int, float]:
    """CPU seconds of each process of the PostgreSQL server ``postmaster`` (its backends and
    background processes) by pid; empty when None."""
    if postmaster is None:
        return {}
    return {pid: process_cpu(pid) for pid in children(postmaster)}


def server_pids() -> dict[str, list[int]]:
    """Running server processes by role (every PostgreSQL backend, redis-server, RabbitMQ)."""
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in SERVERS:
            found.setdefault(SERVERS[comm], []).append(int(entry.name))
    return found


def postmaster_pid(database_url: str) -> int | None:
    """The pid of the local PostgreSQL server behind ``database_url`` (the parent of a
    backend of it), so that other clusters on the machine are not counted; None when the
    server is not on this machine."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend = row[0]
        try:
            return int(Path(f"/proc/{backend}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return None


class CpuMeter:
    """CPU seconds each role spent between construction and :meth:`stop`.

    Roles: ``client`` (this process), ``worker main`` (``worker_pid``, or several workers'
    main processes), ``pool children`` (their children at the start), and each server of
    :data:`SERVERS` (PostgreSQL: only the server of ``postmaster`` when given). Server
    processes started meanwhile (a new PostgreSQL backend) count from 0.
    """

    def __init__(self, worker_pid: int | Sequence[int], postmaster: int | None = None) -> None:
        mains = [worker_pid] if isinstance(worker_pid, int) else list(worker_pid)
        self._roles: dict[str, list[int]] = {
            "worker main": mains, "pool children": [c for pid in mains for c in children(pid)]}
        self._postmaster = postmaster
        self._start = {pid: process_cpu(pid) for pids in self._all().values() for pid in pids}
        self._client = time.process_time()

    def _all(self) -> dict[str, list[int]]:
        servers = server_pids()
        if self._postmaster is not None:  # only the server under test, not other clusters
            servers["PostgreSQL"] = [self._postmaster, *children(self._postmaster)]
        return {**self._roles, **servers}

    def stop(self) -> dict[str, float]:
        """CPU seconds per role since the start (the client first)."""
        spent = {"client": time.process_time() - self._client}
        for role, pids in self._all().items():
            spent[role] = sum(max(0.0, process_cpu(pid) - self._start.get(pid, 0.0))
                              for pid in pids)
        return spent
