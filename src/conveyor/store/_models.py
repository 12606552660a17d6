"""The job schema: attrs models shared by the core and every store.

Value objects (options, backoff, limits, events, outcomes) are frozen and validate at
construction, so bad input fails where it is written. :class:`JobData`, the job record, is
mutable: stores build and change it, and hand out copies (:meth:`JobData.copy`).

The serialized form of every model is defined by one cattrs converter, in ``_serializer.py``.
"""

from __future__ import annotations

import enum
import random
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final, TypeVar

import attrs
from croniter import croniter

from ._durations import Duration, parse_duration, to_utc
from ._errors import ArgumentTypeError, InvalidArgumentError
from ._json import JsonValue, copy_json

__all__ = [
    "ALL_JOB_NAMES",
    "AttemptRecord",
    "Backoff",
    "BackoffType",
    "ChildFailurePolicy",
    "Deduplication",
    "EventType",
    "FetchOptions",
    "Group",
    "JobData",
    "JobOptions",
    "JobOutcome",
    "JobState",
    "Limiter",
    "LockStatus",
    "MetricKind",
    "Metrics",
    "MetricsBucket",
    "OutcomeKind",
    "Repeat",
    "RepeatRun",
    "StoreEvent",
    "TERMINAL_STATES",
    "WAKE_EVENTS",
]

ALL_JOB_NAMES: Final = "__all__"
"""The name :meth:`Store.pause_job_name` takes to pause a whole queue. No job may be named so."""

MAX_NAME_LENGTH: Final = 1024
PRIORITY_MIN: Final = -(2**31)
PRIORITY_MAX: Final = 2**31 - 1


class JobState(enum.StrEnum):
    """Where a job is in its life. Values are the wire form.

    * ``waiting``: ready to be claimed by a worker.
    * ``waiting-children``: a flow parent waiting for its children to finish.
    * ``delayed``: waiting until ``delay_until`` (a delay, a retry's backoff, a schedule).
    * ``active``: claimed by a worker, which holds its lock.
    * ``completed``: done, with a ``returnvalue``.
    * ``failed``: failed for good, with a ``failed_reason``.
    """

    WAITING = "waiting"
    WAITING_CHILDREN = "waiting-children"
    DELAYED = "delayed"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"

    @classmethod
    def parse(cls, value: object, argument: str = "state") -> JobState:
        """Return the state named by ``value`` (a ``JobState`` or its string), or raise."""
        return _enum_value(cls, value, argument)


TERMINAL_STATES: Final = frozenset({JobState.COMPLETED, JobState.FAILED})
"""The states a job does not leave by itself: ``completed`` and ``failed``."""


class ChildFailurePolicy(enum.StrEnum):
    """What a child's final failure does to its parent (``fail_parent_on_child_failure``).

    * ``fail``: the parent fails at once (and, by its own policy, its parent).
    * ``ignore``: the failure counts as the child being done; the parent goes on.
    * ``remove``: the child is detached from the parent, which goes on without it.
    """

    FAIL = "fail"
    IGNORE = "ignore"
    REMOVE = "remove"


class BackoffType(enum.StrEnum):
    """The kinds of :class:`Backoff`: ``fixed``, ``exponential`` and ``custom``."""

    FIXED = "fixed"
    EXPONENTIAL = "exponential"
    CUSTOM = "custom"


class EventType(enum.StrEnum):
    """The events stores publish. A job event is named after the state the job entered.

    * job states: ``waiting``, ``waiting-children``, ``delayed``, ``active``, ``completed``,
      ``failed``, each with ``data["prev"]``, the state the job left;
    * ``progress`` (``data["progress"]``), ``stalled``, ``removed``, ``cancel-requested``
      (a running job was cancelled);
    * queue events: ``paused`` and ``resumed`` (``data["job_name"]``), ``drained``
      (``data["count"]``), ``cleaned`` (``data["state"]``, ``data["count"]``),
      ``obliterated``;
    * ``error``: emitted by an :class:`~conveyor.EventBus` when a callback raises, and by a
      worker when its store cannot be reached.
    """

    WAITING = "waiting"
    WAITING_CHILDREN = "waiting-children"
    DELAYED = "delayed"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    PROGRESS = "progress"
    STALLED = "stalled"
    REMOVED = "removed"
    CANCEL_REQUESTED = "cancel-requested"
    ERROR = "error"
    PAUSED = "paused"
    RESUMED = "resumed"
    DRAINED = "drained"
    CLEANED = "cleaned"
    OBLITERATED = "obliterated"


WAKE_EVENTS: Final = frozenset(
    {EventType.WAITING, EventType.DELAYED, EventType.RESUMED, EventType.CANCEL_REQUESTED}
)
"""The events a worker acts on: work to claim, a delayed job to promote, a running job to
cancel. A worker's subscription takes only these (``event_types``), so a store may carry them
apart from the others: a process that only runs workers is then not woken by the ``active``
and ``completed`` events of every job its workers, and every other process's, run."""


class OutcomeKind(enum.StrEnum):
    """How a worker ends one run of a job (see :class:`JobOutcome`)."""

    COMPLETED = "completed"
    FAILED = "failed"
    RETRY = "retry"
    DELAY = "delay"


class LockStatus(enum.StrEnum):
    """What :meth:`Store.extend_locks` found for one job."""

    EXTENDED = "extended"
    CANCEL_REQUESTED = "cancel-requested"
    """Extended, but the job was cancelled: its worker must stop it and record the failure."""
    LOST = "lost"
    """The caller no longer holds the lock (expired and recovered, finished, removed)."""


# ---------------------------------------------------------------------------------------------
# validators


def _name(argument: str, value: object, *, allow_all: bool = True) -> str:
    if not isinstance(value, str):
        raise ArgumentTypeError(argument, f"expected str, got {type(value).__name__}")
    if not value:
        raise InvalidArgumentError(argument, "must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(argument, f"longer than {MAX_NAME_LENGTH} characters")
    if "\x00" in value:
        raise InvalidArgumentError(argument, "must not contain NUL characters")
    if not allow_all and value == ALL_JOB_NAMES:
        raise InvalidArgumentError(argument, f"{ALL_JOB_NAMES!r} is reserved")
    return value


def check_name(value: object, argument: str) -> str:
    """Validate a queue name, job name, id or group id: a non-empty ``str`` without NUL."""
    return _name(argument, value)


def check_job_name(value: object, argument: str = "name") -> str:
    """Validate a job name (also refusing the reserved ``"__all__"``)."""
    return _name(argument, value, allow_all=False)


def check_int(
    value: object, argument: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Validate an ``int`` (not ``bool``) within bounds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(argument, f"expected int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(argument, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidArgumentError(argument, f"must be at most {maximum}, got {value}")
    return value


def _v_name(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    _name(attr.name, value)


def _v_optional_name(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _name(attr.name, value)


def _v_bool(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ArgumentTypeError(attr.name, f"expected bool, got {type(value).__name__}")


def _v_int(minimum: int | None = None, maximum: int | None = None) -> Any:
    def validate(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        check_int(value, attr.name, minimum=minimum, maximum=maximum)

    return validate


def _v_optional_int(minimum: int | None = None) -> Any:
    def validate(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check_int(value, attr.name, minimum=minimum)

    return validate


def _v_fraction(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentTypeError(attr.name, f"expected a number, got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise InvalidArgumentError(attr.name, f"must be between 0 and 1, got {value}")


def _v_keep(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool):
        return
    if not isinstance(value, int):
        raise ArgumentTypeError(
            attr.name, f"expected bool or a count of jobs to keep, got {type(value).__name__}"
        )
    if value < 0:
        raise InvalidArgumentError(
            attr.name, f"the count of jobs to keep must be >= 0, got {value}"
        )


E = TypeVar("E", bound=enum.StrEnum)


def _enum_value(enum_type: type[E], value: object, argument: str) -> E:
    if isinstance(value, enum_type):
        return value
    if isinstance(value, str):
        try:
            return enum_type(value)
        except ValueError:
            pass
        known = ", ".join(repr(m.value) for m in enum_type)
        raise InvalidArgumentError(argument, f"unknown value {value!r} (known: {known})")
    raise ArgumentTypeError(argument, f"expected str, got {type(value).__name__}")


def _instance_of(kind: type, argument: str) -> Any:
    def validate(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
        if value is not None and not isinstance(value, kind):
            raise ArgumentTypeError(
                argument, f"expected {kind.__name__}, got {type(value).__name__}"
            )

    return validate


# Named converters (the attrs mypy plugin reads their parameter types as the __init__ types).


def _optional_seconds(value: Duration | None, argument: str) -> float | None:
    return None if value is None else parse_duration(value, argument, allow_zero=False)


def _optional_utc(value: datetime | None, argument: str) -> datetime | None:
    return None if value is None else to_utc(value, argument)


def _backoff_type(value: BackoffType | str) -> BackoffType:
    return _enum_value(BackoffType, value, "backoff.type")


def _backoff_delay(value: Duration) -> float:
    return parse_duration(value, "backoff.delay")


def _backoff_max_delay(value: Duration | None) -> float | None:
    return _optional_seconds(value, "backoff.max_delay")


def _repeat_every(value: Duration | None) -> float | None:
    return _optional_seconds(value, "repeat.every")


def _repeat_start(value: datetime | None) -> datetime | None:
    return _optional_utc(value, "repeat.start")


def _repeat_end(value: datetime | None) -> datetime | None:
    return _optional_utc(value, "repeat.end")


def _dedup_ttl(value: Duration | None) -> float | None:
    return _optional_seconds(value, "deduplication.ttl")


def _limiter_duration(value: Duration) -> float:
    return parse_duration(value, "limiter.duration", allow_zero=False)


def _delay(value: Duration) -> float:
    return parse_duration(value, "delay")


def _timeout(value: Duration | None) -> float | None:
    return _optional_seconds(value, "timeout")


def _child_failure_policy(value: ChildFailurePolicy | str) -> ChildFailurePolicy:
    return _enum_value(ChildFailurePolicy, value, "fail_parent_on_child_failure")


def _group_ids(value: Iterable[str]) -> frozenset[str]:
    if isinstance(value, str):
        raise ArgumentTypeError("exclude_groups", "expected a collection of group ids, not a str")
    return frozenset(value)


# ---------------------------------------------------------------------------------------------
# options


@attrs.frozen
class Backoff:
    """How long to wait before retrying a failed attempt.

    Build one with a named constructor::

        Backoff.fixed("5s")                          # 5 s before every retry
        Backoff.exponential(1.0, max_delay="1m")     # 1 s, 2 s, 4 s, ... capped at 60 s
        Backoff.custom("myapp.retry:delay_for")      # a function (attempts_made, error) -> seconds

    ``jitter`` (0..1) takes a random fraction of up to that share off each delay, so that many
    jobs failing together do not retry together.
    """

    type: BackoffType = attrs.field(converter=_backoff_type)
    delay: float = attrs.field(default=0.0, converter=_backoff_delay)
    jitter: float = attrs.field(default=0.0, validator=_v_fraction)
    max_delay: float | None = attrs.field(default=None, converter=_backoff_max_delay)
    strategy: str | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        if self.type is BackoffType.CUSTOM:
            if not isinstance(self.strategy, str) or not re.fullmatch(
                r"[\w.]+:[\w.]+", self.strategy
            ):
                raise InvalidArgumentError(
                    "backoff.strategy",
                    "a custom backoff needs the import path of its function, 'module:function'",
                )
        elif self.strategy is not None:
            raise InvalidArgumentError("backoff.strategy", "only a custom backoff has a strategy")

    @classmethod
    def fixed(cls, delay: float | str | Any, *, jitter: float = 0.0) -> Backoff:
        """The same delay before every retry."""
        return cls(BackoffType.FIXED, delay, jitter=jitter)

    @classmethod
    def exponential(
        cls, delay: float | str | Any, *, jitter: float = 0.0, max_delay: Any = None
    ) -> Backoff:
        """``delay * 2 ** (attempts_made - 1)``: doubling after each failed attempt."""
        return cls(BackoffType.EXPONENTIAL, delay, jitter=jitter, max_delay=max_delay)

    @classmethod
    def custom(cls, strategy: str | Any, *, jitter: float = 0.0, max_delay: Any = None) -> Backoff:
        """A function of yours computes the delay.

        :param strategy: the function, or its import path ``"package.module:function"``. It is
            stored by import path, so it must be importable by the worker.
        """
        if callable(strategy):
            module = getattr(strategy, "__module__", None)
            qualname = getattr(strategy, "__qualname__", "")
            if not module or "<" in qualname:
                raise InvalidArgumentError(
                    "backoff.strategy",
                    "a custom backoff function must be importable (a module-level function)",
                )
            strategy = f"{module}:{qualname}"
        return cls(BackoffType.CUSTOM, 0.0, jitter=jitter, max_delay=max_delay, strategy=strategy)

    def delay_for(self, attempts_made: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``attempts_made`` failed attempts (fixed and exponential only)."""
        if self.type is BackoffType.FIXED:
            base = self.delay
        elif self.type is BackoffType.EXPONENTIAL:
            base = self.delay * 2.0 ** max(attempts_made - 1, 0)
        else:
            raise InvalidArgumentError(
                "backoff", "a custom backoff computes its delay through its strategy"
            )
        return self.finish(base, rng)

    def finish(self, base: float, rng: random.Random | None = None) -> float:
        """Apply ``max_delay`` and ``jitter`` to a computed delay."""
        if self.max_delay is not None:
            base = min(base, self.max_delay)
        if self.jitter:
            base -= base * self.jitter * (rng or random).random()
        return max(base, 0.0)


@attrs.frozen
class Repeat:
    """Run a job repeatedly: on a cron schedule or every fixed interval (give exactly one).

    ::

        await queue.add("report", repeat=Repeat(cron="0 9 * * 1-5", tz="Europe/Paris"))
        await queue.add("poll", repeat=Repeat(every="30s", limit=100))

    :meth:`Queue.every <conveyor.Queue.every>` and :meth:`Queue.cron <conveyor.Queue.cron>`
    are shorthands for these.

    :param cron: a cron expression (5 fields, or 6 with seconds), read by ``croniter``.
    :param every: an interval (a duration) between runs.
    :param limit: stop after this many runs.
    :param start: no run before this time (aware ``datetime``).
    :param end: no run after it.
    :param tz: the IANA time zone the cron expression is read in (default UTC).
    """

    cron: str | None = attrs.field(default=None)
    every: float | None = attrs.field(default=None, converter=_repeat_every)
    limit: int | None = attrs.field(default=None, validator=_v_optional_int(minimum=1))
    start: datetime | None = attrs.field(default=None, converter=_repeat_start)
    end: datetime | None = attrs.field(default=None, converter=_repeat_end)
    tz: str | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise InvalidArgumentError("repeat", "give exactly one of cron= or every=")
        if self.cron is not None:
            if not isinstance(self.cron, str):
                raise ArgumentTypeError(
                    "repeat.cron", f"expected str, got {type(self.cron).__name__}"
                )
            if not croniter.is_valid(self.cron):
                raise InvalidArgumentError(
                    "repeat.cron", f"not a valid cron expression: {self.cron!r}"
                )
        if self.tz is not None:
            if not isinstance(self.tz, str):
                raise ArgumentTypeError("repeat.tz", f"expected str, got {type(self.tz).__name__}")
            try:
                zoneinfo.ZoneInfo(self.tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
                raise InvalidArgumentError("repeat.tz", f"unknown time zone {self.tz!r}") from exc
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise InvalidArgumentError("repeat.end", "must be later than repeat.start")


@attrs.frozen
class Deduplication:
    """Add a job only if no job holding the same key exists.

    ::

        await queue.add("sync", {"user": 42}, deduplication=Deduplication("sync:42", ttl="1m"))

    :param key: the key; ``None`` derives it from the job's name and data.
    :param ttl: with a ttl, the key is held for that long from the job's creation, whatever
        the job's state (throttling); without, it is held until the job completes or fails.
    :param hash: store a SHA-256 of the key instead of the key itself (long keys).
    """

    key: str | None = attrs.field(default=None, validator=_v_optional_name)
    ttl: float | None = attrs.field(default=None, converter=_dedup_ttl)
    hash: bool = attrs.field(default=False, validator=_v_bool)


@attrs.frozen
class Group:
    """Put a job in a group. Groups are served round-robin; see :class:`FetchOptions`.

    ::

        await queue.add("render", data, group=Group("tenant-7", max_size=1000))

    :param id: the group's id (a tenant, a customer, ...).
    :param max_size: refuse the job (``GroupFullError``) when the group already holds this many
        waiting jobs.
    """

    id: str = attrs.field(validator=_v_name)
    max_size: int | None = attrs.field(default=None, validator=_v_optional_int(minimum=1))


@attrs.frozen
class Limiter:
    """At most ``max`` jobs started per ``duration``, counted across every worker of the queue.

    The window slides: a job may start when fewer than ``max`` started in the ``duration``
    just past. ::

        async with conveyor.open_worker("api", call, store=store, limiter=Limiter(10, "1s")):
            ...
    """

    max: int = attrs.field(validator=_v_int(minimum=1))
    duration: float = attrs.field(converter=_limiter_duration)


@attrs.frozen(kw_only=True)
class JobOptions:
    """The options a job is added with: the keyword arguments of :meth:`Queue.add
    <conveyor.Queue.add>`, and the ``default_job_options`` of a :class:`~conveyor.Queue`.

    Every value is checked here, so a bad one fails when the options are built, naming the
    option. Durations take seconds, a ``timedelta`` or a string such as ``"5s"``.
    """

    priority: int = attrs.field(default=0, validator=_v_int(PRIORITY_MIN, PRIORITY_MAX))
    """Lower runs first (default 0; any 32-bit integer)."""
    delay: float = attrs.field(default=0.0, converter=_delay)
    """Run no sooner than this long after the job is added."""
    attempts: int = attrs.field(default=1, validator=_v_int(minimum=1))
    """How many times the job may run before it fails for good."""
    backoff: Backoff | None = attrs.field(default=None, validator=_instance_of(Backoff, "backoff"))
    """How long to wait before each retry (default: retry at once)."""
    lifo: bool = attrs.field(default=False, validator=_v_bool)
    """Go before the other waiting jobs of the same priority instead of after them."""
    job_id: str | None = attrs.field(default=None, validator=_v_optional_name)
    """The job's id (default: a fresh one); a taken id raises ``DuplicateJobError``."""
    deduplication: Deduplication | None = attrs.field(
        default=None, validator=_instance_of(Deduplication, "deduplication")
    )
    """Return the job already holding this key instead of adding another."""
    remove_on_complete: bool | int = attrs.field(default=False, validator=_v_keep)
    """``True`` removes the job when it completes; a count keeps the newest N."""
    remove_on_fail: bool | int = attrs.field(default=False, validator=_v_keep)
    """``True`` removes the job when it fails for good; a count keeps the newest N."""
    timeout: float | None = attrs.field(default=None, converter=_timeout)
    """Cancel an attempt that runs longer than this: it fails (and may retry)."""
    repeat: Repeat | None = attrs.field(default=None, validator=_instance_of(Repeat, "repeat"))
    """Run the job on a schedule: each run is a job of its own."""
    group: Group | None = attrs.field(default=None, validator=_instance_of(Group, "group"))
    """The job's group: groups are served round-robin and may have their own limits."""
    fail_parent_on_child_failure: ChildFailurePolicy = attrs.field(
        default=ChildFailurePolicy.FAIL,
        converter=_child_failure_policy,
    )
    """In a flow, what this job's final failure does to its parent."""

    def __attrs_post_init__(self) -> None:
        if self.repeat is not None and self.deduplication is not None:
            raise InvalidArgumentError(
                "deduplication", "a repeating job is already created once per run; drop one"
            )


@attrs.frozen
class AttemptRecord:
    """One finished run of a job, kept in :attr:`JobData.attempt_logs`.

    :param attempt: the attempt's number, from 1.
    :param worker_id: the id of the worker that ran it.
    :param started_at: when it was claimed.
    :param finished_at: when it ended.
    :param outcome: how it ended.
    :param error: the failure's reason, for a failed run.
    """

    attempt: int
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime
    outcome: str
    """``completed``, ``failed``, ``retry``, ``delay``, ``stalled`` or ``released``."""
    error: str | None = None


@attrs.frozen
class RepeatRun:
    """Which run of a repeating job this job is: the schedule's ``key``, the run's number
    ``count`` (from 1) and ``at``, the grid time it is due.

    Runs sit on a fixed grid (cron fire times, or multiples of ``every``), and a run's job id is
    derived from ``key`` and ``at``, so each grid point is created once however many producers
    and workers schedule it.
    """

    key: str
    count: int
    at: datetime


NO_OPTIONS = JobOptions()
"""The default options, one shared instance (frozen): a job without options of its own has
these, and serializing it sees that by identity instead of comparing every field."""


@attrs.define(eq=True)
class JobData:
    """The stored record of one job.

    ``id``, ``queue_name``, ``name``, ``data`` and ``opts`` are set by whoever adds the job;
    everything else belongs to the store, which sets ``created_at`` (by its own clock),
    ``delay_until`` (from ``opts.delay``) and the initial ``state`` when it saves the job.
    """

    id: str
    """Unique within the queue."""
    queue_name: str
    """The queue the job belongs to."""
    name: str
    """The job's name (workers may be limited to one name)."""
    data: JsonValue = None
    """The payload: any JSON value."""
    opts: JobOptions = attrs.field(default=NO_OPTIONS)
    """The options the job was added with."""
    state: JobState = JobState.WAITING
    """Where the job is in its life."""
    progress: JsonValue = 0
    """The last progress the processor recorded: a number or any JSON value."""
    returnvalue: JsonValue = None
    """What the processor returned, once the job completed."""
    failed_reason: str | None = None
    """Why the last attempt failed."""
    stacktrace: list[str] = attrs.field(factory=list)
    """One traceback per failed attempt, oldest first."""
    attempts_made: int = 0
    """Finished attempts (stalls, delays and released claims do not count)."""
    stalled_count: int = 0
    """How many times the job's lock expired while it ran."""
    created_at: datetime | None = None
    """When the store saved the job, by the store's clock."""
    processed_at: datetime | None = None
    """When the current or last run was claimed."""
    completed_at: datetime | None = None
    """When the job completed."""
    failed_at: datetime | None = None
    """When the job failed for good."""
    cancelled_at: datetime | None = None
    """When the job was cancelled."""
    delay_until: datetime | None = None
    """When a delayed job becomes due."""
    lock_until: datetime | None = None
    """When the current claim's lock expires unless renewed."""
    locked_by: str | None = None
    """The id of the worker holding the current claim."""
    lock_token: str | None = None
    """The fencing token of the current claim: outcome writes and lock extensions must show it."""
    logs: list[str] = attrs.field(factory=list)
    """Lines of text the processor logged."""
    attempt_logs: list[AttemptRecord] = attrs.field(factory=list)
    """One :class:`AttemptRecord` per finished run, oldest first."""
    discarded: bool = False
    """No attempt runs after the current one."""
    parent_id: str | None = None
    """In a flow: the parent's id."""
    parent_queue_name: str | None = None
    """In a flow: the parent's queue."""
    pending_children: int = 0
    """In a flow: how many of this job's children have not finished yet."""
    children_values: dict[str, JsonValue] = attrs.field(factory=dict)
    """Return values of completed children, keyed ``"<queue_name>:<job_id>"``."""
    deduplication_key: str | None = None
    """The deduplication key the job holds (see :class:`Deduplication`)."""
    deduplication_until: datetime | None = None
    """With a deduplication TTL: until when the job holds its key."""
    repeat_run: RepeatRun | None = None
    """For a run of a repeating job: which run it is."""

    @property
    def group_id(self) -> str | None:
        """The id of the job's group, if it has one."""
        group = self.opts.group
        return None if group is None else group.id

    @property
    def priority(self) -> int:
        """The job's priority, from ``opts.priority``."""
        return self.opts.priority

    def copy(self) -> JobData:
        """A deep copy that shares nothing mutable with this record."""
        raise NotImplementedError  # replaced below by _make_copy()


def _make_copy() -> Any:
    """Generate ``JobData.copy`` as straight-line code, field by field.

    Stores copy a record on every read and claim; a loop over the fields with ``getattr`` /
    ``setattr`` costs about twice as much (bench/memory_claim.py). Immutable fields (str, int,
    datetime, frozen options) are shared; JSON values and lists are copied.
    """
    deep = {
        "data": "copy_json(self.data)",
        "progress": "copy_json(self.progress)",
        "returnvalue": "copy_json(self.returnvalue)",
        "children_values": "copy_json(self.children_values)",
        "stacktrace": "list(self.stacktrace)",
        "logs": "list(self.logs)",
        "attempt_logs": "list(self.attempt_logs)",
    }
    body = [
        f"    new.{f.name} = {deep.get(f.name, f'self.{f.name}')}" for f in attrs.fields(JobData)
    ]
    source = (
        "def copy(self):\n    new = new_job(JobData)\n" + "\n".join(body) + "\n    return new\n"
    )
    namespace: dict[str, Any] = {
        "new_job": object.__new__,
        "JobData": JobData,
        "copy_json": copy_json,
    }
    exec(source, namespace)
    copy = namespace["copy"]
    copy.__doc__ = JobData.copy.__doc__
    copy.__qualname__ = "JobData.copy"
    return copy


JobData.copy = _make_copy()  # type: ignore[method-assign]

JOB_FIELDS: Final = frozenset(f.name for f in attrs.fields(JobData))
READONLY_JOB_FIELDS: Final = frozenset({"id", "queue_name", "created_at"})


@attrs.frozen(kw_only=True)
class FetchOptions:
    """What a claim may take. Every rule holds across all workers of the queue.

    Claim order: each group is a lane and so are the jobs without a group; the lane served
    least recently goes first (ties: the lane id, the group-less lane first). Within a lane the
    job with the lowest ``priority`` goes first, then the oldest (FIFO), or the newest when
    ``lifo`` is set. A job added with ``opts.lifo`` goes before the lane's other jobs of its
    priority.
    """

    lifo: bool = attrs.field(default=False, validator=_v_bool)
    """Claim the newest job of a lane first instead of the oldest."""
    job_name: str | None = attrs.field(default=None, validator=_v_optional_name)
    """Only claim jobs of this name."""
    group_concurrency: int | None = attrs.field(default=None, validator=_v_optional_int(1))
    """At most this many active jobs per group."""
    group_limiter: Limiter | None = attrs.field(
        default=None, validator=_instance_of(Limiter, "group_limiter")
    )
    """At most ``max`` claims per group per ``duration``."""
    exclude_groups: frozenset[str] = attrs.field(default=frozenset(), converter=_group_ids)
    """Skip the jobs of these groups."""
    max_global_concurrency: int | None = attrs.field(default=None, validator=_v_optional_int(1))
    """At most this many active jobs in the queue."""
    limiter: Limiter | None = attrs.field(default=None, validator=_instance_of(Limiter, "limiter"))
    """At most ``max`` claims in the queue per ``duration``."""


@attrs.frozen
class StoreEvent:
    """Something that happened in a store (or, on a worker's bus, in the worker).

    :param type: what happened, an :class:`EventType` value (or a name of your own).
    :param queue_name: the queue it happened in.
    :param job_id: the job it is about, if any.
    :param data: details, by event (see :class:`EventType`).
    :param timestamp: when it happened, by the store's clock.

    A job event is named after the state the job entered (``waiting``, ``active``, ...) and its
    ``data`` holds ``prev`` (the state it left, if any) and what the change produced
    (``returnvalue``, ``failed_reason``, ``progress``, ``delay_until``).

    Events are built on hot paths, so construction does not validate; ``Store.publish``, the
    edge where callers hand one in, does.
    """

    type: str
    queue_name: str
    job_id: str | None = None
    data: Mapping[str, JsonValue] = attrs.field(factory=dict)
    timestamp: datetime | None = None


class MetricKind(enum.StrEnum):
    """What :meth:`Queue.get_metrics <conveyor.Queue.get_metrics>` counts: jobs that
    ``completed``, or that ``failed`` for good."""

    COMPLETED = "completed"
    FAILED = "failed"


@attrs.frozen
class MetricsBucket:
    """Jobs that finished in one minute (``minute`` is its start)."""

    minute: datetime
    count: int


@attrs.frozen
class Metrics:
    """Finished jobs of a queue: ``total`` since the queue began, and per-minute ``buckets``
    (oldest first, minutes without jobs left out) within the store's retention."""

    kind: MetricKind
    total: int
    buckets: list[MetricsBucket] = attrs.field(factory=list)


@attrs.frozen
class JobOutcome:
    """The end of one run of a claimed job, written by :meth:`Store.finish_jobs`.

    Build one with a named constructor from the claimed :class:`JobData` (which carries the
    fencing token)::

        JobOutcome.completed(job, returnvalue)
        JobOutcome.failed(job, "boom", stacktrace=tb)         # final failure
        JobOutcome.retry(job, "boom", delay=2.0)               # failed attempt, run again later
        JobOutcome.delay_job(job, delay=60)                    # move to delayed, no attempt used
    """

    kind: OutcomeKind
    queue_name: str
    job_id: str
    lock_token: str
    """The claim's fencing token: the outcome applies only while it still holds the job."""
    returnvalue: JsonValue = None
    failed_reason: str | None = None
    stacktrace: str | None = None
    delay: float = 0.0
    cancelled: bool = False

    @staticmethod
    def _token(job: JobData) -> str:
        if job.lock_token is None:
            raise InvalidArgumentError(
                "job", f"job {job.id!r} is not a claimed job (no lock token)"
            )
        return job.lock_token

    @classmethod
    def completed(cls, job: JobData, returnvalue: JsonValue = None) -> JobOutcome:
        """The run succeeded with ``returnvalue``: the job completes."""
        return cls(OutcomeKind.COMPLETED, job.queue_name, job.id, cls._token(job), returnvalue)

    @classmethod
    def failed(
        cls, job: JobData, reason: str, *, stacktrace: str | None = None, cancelled: bool = False
    ) -> JobOutcome:
        """The job fails for good, whatever attempts remain (``cancelled``: it was cancelled)."""
        return cls(
            OutcomeKind.FAILED, job.queue_name, job.id, cls._token(job),
            failed_reason=reason, stacktrace=stacktrace, cancelled=cancelled,
        )  # fmt: skip

    @classmethod
    def retry(
        cls, job: JobData, reason: str, *, delay: Any = 0.0, stacktrace: str | None = None
    ) -> JobOutcome:
        """The attempt failed and the job runs again after ``delay``; the attempt counts."""
        return cls(
            OutcomeKind.RETRY, job.queue_name, job.id, cls._token(job),
            failed_reason=reason, stacktrace=stacktrace, delay=parse_duration(delay, "delay"),
        )  # fmt: skip

    @classmethod
    def delay_job(cls, job: JobData, delay: Any) -> JobOutcome:
        """The run ends without a result and the job runs again after ``delay``; the
        attempt does not count."""
        return cls(
            OutcomeKind.DELAY, job.queue_name, job.id, cls._token(job),
            delay=parse_duration(delay, "delay"),
        )  # fmt: skip
