"""``swf-celery doctor``: why runs are stuck, and whether PostgreSQL is healthy for this load.

:func:`doctor` (``swf.doctor(repo)``) returns a :class:`Report` of findings
(:class:`~.doctor_findings.Finding`: a check, a severity, a subject, a one-line summary and
a one-line remedy), worst first:

- each run where nothing happened for ``Limits.stalled_after`` seconds, explained step by
  step (:mod:`.doctor_runs`: paused, a retry due, a queue nobody consumes, a worker gone
  with its message, a dead-lettered or missing message, a task not registered, stranded);
- PostgreSQL (:mod:`.doctor_health`): the vacuum horizon (old and idle transactions,
  prepared transactions, replication slots), dead rows of the queue and state tables, the
  notification queue and listeners that stopped reading, connections against
  ``max_connections``, schema and function versions against this code, retention, dead
  letters and queues without consumers.

:func:`explain_run` gives the findings of one run (the console shows them on a stuck run's
page). Everything is read-only; it reads as much as the role may (the operator reads all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from swf_celery.db import DatabaseHandle, resolve, translate_errors
from swf_celery.ops import doctor_health, doctor_runs
from swf_celery.ops.doctor_findings import EXIT_STATUS, Finding, Limits, worst

__all__ = ["Finding", "Limits", "Report", "doctor", "explain_run"]


@dataclass(frozen=True)
class Report:
    """What :func:`doctor` found, worst first."""

    findings: tuple[Finding, ...]
    #: Ids of the runs explained (those where nothing happened for ``stalled_after``).
    stalled_runs: tuple[str, ...] = field(default=())

    @property
    def severity(self) -> str:
        """The worst severity found (``ok`` when nothing is wrong)."""
        return worst(self.findings)

    @property
    def exit_status(self) -> int:
        """The exit status of ``swf-celery doctor``: 0 ok or info, 1 warning, 2 error."""
        return EXIT_STATUS[self.severity]

    def by_check(self, check: str) -> list[Finding]:
        """The findings of one check (``"vacuum_horizon"``, ``"dead_lettered"``, ...)."""
        return [f for f in self.findings if f.check == check]

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-safe data (``swf-celery doctor --json``)."""
        return {"severity": self.severity, "exit_status": self.exit_status,
                "stalled_runs": list(self.stalled_runs),
                "findings": [f.as_dict() for f in self.findings]}


def doctor(repo: DatabaseHandle | None = None, *, limits: Limits | None = None) -> Report:
    """Examine the database of ``repo`` (a DSN, Engine or pool): stuck runs and PostgreSQL's
    health. See the module docstring; nothing is changed."""
    limits = limits or Limits()
    db = resolve(repo)
    findings: list[Finding] = []
    with translate_errors(), db.connect(autocommit=True) as conn:
        for check in doctor_health.CHECKS:
            findings.extend(_guarded(conn, check.__name__.removeprefix("check_"),
                                     lambda c=check: c(conn, limits)))  # type: ignore[misc]
        runs: list[str] = []
        if not any(f.check == "schema" and f.severity == "error" for f in findings):
            runs = doctor_runs.stalled_runs(conn, limits)
            for run_id in runs:
                findings.extend(_guarded(conn, "runs", lambda r=run_id: doctor_runs.explain_run(
                    conn, r, limits)))  # type: ignore[misc]
    findings.sort(key=lambda f: -f.rank)
    return Report(tuple(findings), tuple(runs))


def explain_run(run_id: str, repo: DatabaseHandle | None = None, *,
                limits: Limits | None = None) -> list[Finding]:
    """Why run ``run_id`` is not moving (empty when it is finished or unknown), worst first."""
    db = resolve(repo)
    with translate_errors(), db.connect(autocommit=True) as conn:
        return doctor_runs.explain_run(conn, str(run_id), limits)


def _guarded(conn: psycopg.Connection[Any], name: str, check: Any) -> list[Finding]:
    """Run one check; one the role may not run, or that fails, becomes a finding."""
    try:
        with conn.transaction():
            return list(check())
    except psycopg.errors.InsufficientPrivilege as exc:
        return [Finding(name, "info", name, f"not checked: {exc.diag.message_primary}",
                        "run `swf-celery doctor` as an operator (or a role with "
                        "pg_read_all_stats) to see this")]
    except psycopg.Error as exc:
        return [Finding(name, "warning", name, f"check failed: {str(exc).strip()[:200]}",
                        "run `swf-celery migrate`, then the doctor again")]
