"""The exception tree: every error the library raises derives from :class:`SwfError`.

Each class says in one line when it is raised. Subsystems add their errors here so a
reader finds the whole tree in one place and callers can catch one base class.
"""

from __future__ import annotations


class SwfError(Exception):
    """Base class of every error raised by swf-celery."""


# -- configuration and database ------------------------------------------------------


class ConfigurationError(SwfError):
    """Raised when a setting (URL, option, environment variable) is malformed."""


class ArgumentError(SwfError, ValueError, TypeError):
    """Raised when an argument of a public function has the wrong type or value."""


class DatabaseError(SwfError):
    """Raised when PostgreSQL reports an error we do not translate more precisely."""


class DatabaseUnavailable(DatabaseError):
    """Raised when the PostgreSQL server cannot be reached or the connection dropped."""


class TransactionConflict(DatabaseError):
    """Raised when PostgreSQL aborted a transaction (deadlock, serialization); retry it."""


class DatabasePermissionError(DatabaseError):
    """Raised when the database role lacks a privilege the operation needs."""


class NotificationQueueFull(DatabaseError):
    """Raised when a NOTIFY asked for by name (``notify_only``) is refused because
    PostgreSQL's notification queue is half full or more: a listener has stopped reading."""


class EmbeddedPostgresError(SwfError):
    """Raised when the embedded PostgreSQL cannot be initialised, started or stopped."""


class WorkerStartError(SwfError, RuntimeError):
    """Raised when a ``celery worker`` subprocess exits or is not ready in time."""


class MigrationError(SwfError):
    """Raised when the schema cannot be migrated."""


class SchemaTooNew(MigrationError):
    """Raised when the database records a schema version newer than this code knows."""


class SchemaNotMigrated(MigrationError):
    """Raised when the swf schema is missing or older than the code needs."""


class MigrationDrift(MigrationError):
    """Raised when a migration recorded as applied differs from the file of the same version."""


# -- broker ---------------------------------------------------------------------------


class QueueNameError(SwfError, ValueError):
    """Raised when a queue name cannot be stored faithfully (control characters, too long)."""


class MessageError(SwfError):
    """Raised when a broker message is malformed and cannot be delivered."""


# -- workflows ------------------------------------------------------------------------


class WorkflowDefinitionError(SwfError, ValueError):
    """Raised when a workflow definition is invalid; nothing is written to the database."""


class UnknownDependencyError(WorkflowDefinitionError):
    """Raised when a step depends on a step the workflow does not define."""


class CycleError(WorkflowDefinitionError):
    """Raised when a workflow definition has a cycle; ``cycle`` lists the steps in it."""

    def __init__(self, message: str, cycle: list[str] | None = None) -> None:
        super().__init__(message)
        self.cycle = list(cycle or [])


class DuplicateStepError(WorkflowDefinitionError):
    """Raised when two steps of one workflow share a name."""


class NoRootStepError(WorkflowDefinitionError):
    """Raised when every step has a dependency, so nothing could start."""


class StepFunctionError(WorkflowDefinitionError):
    """Raised when a step's function is missing or unusable (e.g. not a registered task)."""


class FlowNotFound(SwfError, LookupError):
    """Raised when a stored flow id or slug does not exist."""


class FlowInUse(SwfError):
    """Raised when deleting a flow that has runs in progress."""


class RunNotFound(SwfError, LookupError):
    """Raised when a run id does not exist."""


class RunStateError(SwfError):
    """Raised when a lifecycle operation does not fit the run's state (cancel a finished run)."""


class UnknownSignal(SwfError, LookupError):
    """Raised when a signal names something no step of the run waits for."""


class WorkflowFailed(SwfError):
    """Raised by a blocking execute when the run failed; carries run id, step and cause."""

    def __init__(
        self, message: str, *, run_id: str | None = None, step: str | None = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.step = step
        self.cause = cause


class WorkflowTimeout(SwfError, TimeoutError):
    """Raised by a blocking execute when the run did not end within its timeout."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


# -- messaging ------------------------------------------------------------------------


class ChannelNameError(SwfError, ValueError):
    """Raised when a channel name breaks the identifier rules or the 63-byte limit."""


class PayloadError(SwfError, ValueError):
    """Raised when a message or NOTIFY payload cannot be sent as given (not JSON, NUL, reserved)."""


class PayloadTooLarge(PayloadError):
    """Raised when a NOTIFY payload exceeds PostgreSQL's 8000-byte limit."""


# -- goals ----------------------------------------------------------------------------


class GoalError(SwfError):
    """Raised when a goal cannot be decomposed into a valid task graph."""


class DecomposerError(GoalError):
    """Raised when a decomposer raises or returns something that is not a task list."""


class RunInputError(SwfError, ValueError):
    """Raised when a run's input (or a step's output) is not JSON-serialisable."""


class ScheduleError(SwfError, ValueError):
    """Raised when a beat schedule entry is invalid (bad cron text, no task, unknown option)."""


class ScheduleNotFound(SwfError, LookupError):
    """Raised when a beat schedule entry of that name does not exist."""
