"""The store contract: the :class:`Store` protocol, the job models, the serializer and errors.

This package imports nothing from conveyor's core; stores depend on it alone.
"""

from ._clock import Clock as Clock
from ._clock import ManualClock as ManualClock
from ._clock import SystemClock as SystemClock
from ._clock import from_timestamp as from_timestamp
from ._durations import Duration as Duration
from ._durations import parse_duration as parse_duration
from ._durations import to_utc as to_utc
from ._errors import ArgumentTypeError as ArgumentTypeError
from ._errors import ConveyorError as ConveyorError
from ._errors import DuplicateJobError as DuplicateJobError
from ._errors import GroupFullError as GroupFullError
from ._errors import InvalidArgumentError as InvalidArgumentError
from ._errors import InvalidJobStateError as InvalidJobStateError
from ._errors import JobCancelledError as JobCancelledError
from ._errors import JobFailedError as JobFailedError
from ._errors import JobNotFoundError as JobNotFoundError
from ._errors import SerializationError as SerializationError
from ._errors import StoreError as StoreError
from ._errors import UnknownStoreError as UnknownStoreError
from ._json import JsonValue as JsonValue
from ._json import check_json as check_json
from ._json import copy_json as copy_json
from ._models import ALL_JOB_NAMES as ALL_JOB_NAMES
from ._models import TERMINAL_STATES as TERMINAL_STATES
from ._models import AttemptRecord as AttemptRecord
from ._models import Backoff as Backoff
from ._models import BackoffType as BackoffType
from ._models import ChildFailurePolicy as ChildFailurePolicy
from ._models import Deduplication as Deduplication
from ._models import EventType as EventType
from ._models import FetchOptions as FetchOptions
from ._models import Group as Group
from ._models import JobData as JobData
from ._models import JobOptions as JobOptions
from ._models import JobOutcome as JobOutcome
from ._models import JobState as JobState
from ._models import Limiter as Limiter
from ._models import LockStatus as LockStatus
from ._models import OutcomeKind as OutcomeKind
from ._models import Repeat as Repeat
from ._models import RepeatRun as RepeatRun
from ._models import StoreEvent as StoreEvent
from ._models import check_int as check_int
from ._models import check_job_name as check_job_name
from ._models import check_name as check_name
from ._protocol import EventCallback as EventCallback
from ._protocol import Store as Store
from ._serializer import from_json as from_json
from ._serializer import make_converter as make_converter
from ._serializer import structure as structure
from ._serializer import to_json as to_json
from ._serializer import unstructure as unstructure
from ._validate import validate_new_job as validate_new_job
