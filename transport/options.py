"""Transport options of the ``swf://`` broker, parsed once with defaults and clear errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from swf_celery.errors import ConfigurationError


@dataclass(frozen=True)
class Options:
    """``broker_transport_options`` understood by the transport (others are ignored)."""

    #: Seconds a delivered message stays hidden; held messages are extended every third.
    visibility_timeout: float = 60.0
    #: Deliveries after which a message is dead-lettered (0: no limit).
    max_deliveries: int = 10
    #: Idle consumers LISTEN and are woken by producers (else: poll).
    wakeups: bool = True
    #: Seconds between polls when nothing woke the consumer (without wake-ups, or while the
    #: LISTEN connection is down).
    polling_interval: float = 1.0
    #: With wake-ups, seconds between reads of every consumed queue (a safety net: NOTIFYs,
    #: the listener's reported gaps and due messages say which queues to read meanwhile).
    sweep_interval: float = 30.0
    #: ETA further away than this (seconds) waits in PostgreSQL, not in worker memory.
    eta_threshold: float = 30.0
    #: Most messages read at once when the prefetch window is unlimited.
    read_batch: int = 100
    #: Ack archives instead of deleting.
    archive_acked: bool = False
    #: A publish returns only once its WAL is flushed (synchronous_commit on for publishes).
    durable_publish: bool = False
    #: In the event loop, a sleeping consumer takes the message its wake-up is for in the
    #: NOTIFY itself, claimed for it by the producer's commit (no read); False: it is woken
    #: and reads (transport/handover.py). Opt-in: task messages then travel in NOTIFY
    #: payloads (docs/transport.md, "Hand-over").
    hand_over: bool = False
    #: Run in Celery's event loop (asynchronous prefork pool); False: kombu's synchronous
    #: consume loop (Celery then uses its plain pool, as before this option existed).
    event_loop: bool = True

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None) -> Options:
        """Build from ``broker_transport_options``; raise ConfigurationError naming a bad one."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if not options or f.name not in options or options[f.name] is None:
                continue
            raw = options[f.name]
            default = f.default
            try:
                if isinstance(default, bool):
                    if isinstance(raw, str):
                        if raw.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                            raise ValueError(raw)
                        value: Any = raw.lower() in {"1", "true", "yes", "on"}
                    else:
                        value = bool(raw)
                elif isinstance(default, int):
                    value = int(raw)
                else:
                    value = float(raw)
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"broker_transport_options[{f.name!r}] = {raw!r} is not a valid "
                    f"{type(default).__name__}") from None
            if not isinstance(value, bool) and value < 0:
                raise ConfigurationError(
                    f"broker_transport_options[{f.name!r}] = {raw!r} must not be negative")
            values[f.name] = value
        result = cls(**values)
        if result.visibility_timeout < 1:
            raise ConfigurationError(
                "broker_transport_options['visibility_timeout'] must be at least 1 second")
        if result.read_batch < 1:
            raise ConfigurationError("broker_transport_options['read_batch'] must be at least 1")
        return result

    @property
    def extend_every(self) -> float:
        """Seconds between visibility extensions of held messages."""
        return max(0.2, self.visibility_timeout / 3)
