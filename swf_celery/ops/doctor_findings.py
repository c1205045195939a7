"""What ``swf-celery doctor`` reports: findings, each with a severity and a one-line remedy.

A :class:`Finding` names the check that made it (``check``), what it is about (``subject``:
a run id, a table, a session's pid, a queue), what is wrong (``summary``), what to do
(``remedy``, one line) and the numbers behind it (``details``, JSON-safe). Severities are
ordered: ``ok`` < ``info`` < ``warning`` < ``error``; a report's worst severity is the exit
status of the command (0, 0, 1, 2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Severities, mildest first.
SEVERITIES = ("ok", "info", "warning", "error")
#: The exit status of ``swf-celery doctor`` for a report's worst severity.
EXIT_STATUS = {"ok": 0, "info": 0, "warning": 1, "error": 2}


@dataclass(frozen=True)
class Finding:
    """One thing the doctor found (see the module docstring)."""

    check: str
    severity: str
    subject: str
    summary: str
    remedy: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")

    @property
    def rank(self) -> int:
        """The severity's position in :data:`SEVERITIES` (higher is worse)."""
        return SEVERITIES.index(self.severity)

    def as_dict(self) -> dict[str, Any]:
        """The finding as JSON-safe data."""
        return asdict(self)


def worst(findings: list[Finding] | tuple[Finding, ...]) -> str:
    """The worst severity among ``findings`` (``ok`` when there is none)."""
    return max((f.severity for f in findings), key=SEVERITIES.index, default="ok")


def seconds(value: float | None) -> str:
    """A duration for people: ``42 s``, ``7 min``, ``3.5 h``, ``2 d``."""
    if value is None:
        return "?"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    if value < 172800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.0f} d"


def size(value: int | None) -> str:
    """Bytes for people: ``512 B``, ``3.1 MB``."""
    if value is None:
        return "?"
    amount = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if amount < 1024 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TB"  # pragma: no cover - unreachable


@dataclass(frozen=True)
class Limits:
    """Where the doctor starts to worry (``swf.doctor(repo, limits=Limits(...))``)."""

    #: Seconds after which a transaction, a silent listener, a run that does not move or a
    #: message nobody takes is reported.
    stalled_after: float = 60.0
    #: Dead row versions a queue or state table may have before it is reported ...
    dead_rows: int = 10000
    #: ... when they are also this fraction of its live rows or more.
    dead_ratio: float = 0.2
    #: Fraction of ``max_connections`` in use from which connections are a warning ...
    connections_warning: float = 0.8
    #: ... and an error.
    connections_error: float = 0.95
    #: ``pg_notification_queue_usage()`` from which the notification queue is a warning.
    notify_warning: float = 0.1
    #: Seconds since a consumer last marked a queue (every minute while one consumes it)
    #: after which the queue has no consumer.
    consumer_gone_after: float = 150.0
    #: The workers' ``visibility_timeout`` (``broker_transport_options``): a live worker
    #: extends the messages it holds every third of it, so a held message not extended for
    #: longer (plus :attr:`extension_slack`) has lost its worker.
    visibility_timeout: float = 60.0
    extension_slack: float = 2.0
    #: Most runs the doctor explains in one report.
    runs: int = 50

    def not_extended(self, remaining: float) -> bool:
        """Whether a held message ``remaining`` seconds from visible again has gone unextended
        for longer than a live worker lets it (see :attr:`visibility_timeout`)."""
        since_extended = self.visibility_timeout - remaining
        return since_extended > self.visibility_timeout / 3 + self.extension_slack
