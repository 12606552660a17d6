"""Every exception conveyor raises, in one place.

::

    ConveyorError
    ├── InvalidArgumentError (ValueError)      an argument has a bad value; names the argument
    │   └── SerializationError                 a value JSON cannot hold, or a stored record
    │                                          that does not match the schema
    ├── ArgumentTypeError (TypeError)          an argument has the wrong type; names the argument
    ├── JobNotFoundError (LookupError)         no job with that id in that queue
    ├── InvalidJobStateError                   the job is not in a state that allows the operation
    ├── DuplicateJobError                      a job with that id already exists in the queue
    ├── GroupFullError                         the group already holds ``max_size`` waiting jobs
    ├── JobFailedError                         raised by ``wait_until_finished`` for a failed job
    │   └── JobCancelledError                  ... for a cancelled one
    ├── StoreError                             the store cannot do its work (connection, schema,
    │                                          migration, used before ``connect()``)
    └── UnknownStoreError (LookupError)        no installed store handles that URL scheme

Argument errors subclass the built-in ``ValueError`` / ``TypeError`` as well, so code that
already catches those keeps working.
"""

from __future__ import annotations

__all__ = [
    "ArgumentTypeError",
    "ConveyorError",
    "DuplicateJobError",
    "GroupFullError",
    "InvalidArgumentError",
    "InvalidJobStateError",
    "JobCancelledError",
    "JobFailedError",
    "JobNotFoundError",
    "SerializationError",
    "StoreError",
    "UnknownStoreError",
]


class ConveyorError(Exception):
    """Base class of every error conveyor raises on purpose."""


class InvalidArgumentError(ConveyorError, ValueError):
    """An argument has a value conveyor cannot accept.

    :param argument: the name of the offending argument (``"delay"``, ``"opts.attempts"``).
    :param message: what is wrong with it.
    """

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        super().__init__(f"{argument}: {message}")


class SerializationError(InvalidArgumentError):
    """A value JSON cannot hold, or a stored record that does not match the job schema.

    ``argument`` names the argument or the path inside a record (``"data.tags[2]"``).
    """


class ArgumentTypeError(ConveyorError, TypeError):
    """An argument has the wrong type. ``argument`` names it."""

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        super().__init__(f"{argument}: {message}")


class JobNotFoundError(ConveyorError, LookupError):
    """No job with this id exists in this queue."""

    def __init__(self, queue_name: str, job_id: str) -> None:
        self.queue_name = queue_name
        self.job_id = job_id
        super().__init__(f"no job {job_id!r} in queue {queue_name!r}")


class InvalidJobStateError(ConveyorError):
    """The job is not in a state that allows the operation."""


class DuplicateJobError(ConveyorError):
    """A job with this id already exists in the queue."""

    def __init__(self, queue_name: str, job_id: str) -> None:
        self.queue_name = queue_name
        self.job_id = job_id
        super().__init__(f"a job with id {job_id!r} already exists in queue {queue_name!r}")


class GroupFullError(ConveyorError):
    """The group already holds its ``max_size`` of waiting jobs; nothing was added."""

    def __init__(self, queue_name: str, group_id: str, max_size: int) -> None:
        self.queue_name = queue_name
        self.group_id = group_id
        self.max_size = max_size
        super().__init__(
            f"group {group_id!r} of queue {queue_name!r} already holds {max_size} waiting jobs"
        )


class JobFailedError(ConveyorError):
    """The job ended in the ``failed`` state; ``failed_reason`` says why."""

    def __init__(self, job_id: str, failed_reason: str | None) -> None:
        self.job_id = job_id
        self.failed_reason = failed_reason
        super().__init__(f"job {job_id!r} failed: {failed_reason}")


class JobCancelledError(JobFailedError):
    """The job was cancelled before it could finish."""


class StoreError(ConveyorError):
    """The store cannot do its work: not connected, connection lost, schema or migration trouble."""


class UnknownStoreError(ConveyorError, LookupError):
    """No installed store handles the URL's scheme. The message lists the installed schemes."""

    def __init__(self, url: str, scheme: str, installed: list[str]) -> None:
        self.url = url
        self.scheme = scheme
        self.installed = installed
        hint = ""
        if scheme in ("postgresql", "postgres"):
            hint = " (install the extra: pip install 'conveyor[postgres]')"
        listed = ", ".join(installed) if installed else "none"
        super().__init__(
            f"no store is installed for scheme {scheme!r} of url {url!r}{hint}; "
            f"installed schemes: {listed}"
        )
