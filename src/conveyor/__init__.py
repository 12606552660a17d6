"""conveyor: a job queue for trio and asyncio, with pluggable stores.

The public API is re-exported here from private modules. Layers: the core (this package) uses
only the store contract (:mod:`conveyor.store`); stores implement it and are found by URL
scheme through the ``conveyor.stores`` entry points.
"""

from ._events import EventBus as EventBus
from ._flow import FlowJob as FlowJob
from ._flow import FlowProducer as FlowProducer
from ._flow import FlowResult as FlowResult
from ._job import Dependencies as Dependencies
from ._job import Job as Job
from ._open_store import available_stores as available_stores
from ._open_store import open_store as open_store
from ._open_store import store_from_url as store_from_url
from ._queue import Queue as Queue
from ._worker import Batch as Batch
from ._worker import BatchResult as BatchResult
from ._worker import GroupLimits as GroupLimits
from ._worker import Worker as Worker
from ._worker import open_worker as open_worker
from .store import ALL_JOB_NAMES as ALL_JOB_NAMES
from .store import ArgumentTypeError as ArgumentTypeError
from .store import AttemptRecord as AttemptRecord
from .store import Backoff as Backoff
from .store import BackoffType as BackoffType
from .store import ChildFailurePolicy as ChildFailurePolicy
from .store import ConveyorError as ConveyorError
from .store import Deduplication as Deduplication
from .store import DuplicateJobError as DuplicateJobError
from .store import EventType as EventType
from .store import FetchOptions as FetchOptions
from .store import Group as Group
from .store import GroupFullError as GroupFullError
from .store import InvalidArgumentError as InvalidArgumentError
from .store import InvalidJobStateError as InvalidJobStateError
from .store import JobCancelledError as JobCancelledError
from .store import JobData as JobData
from .store import JobFailedError as JobFailedError
from .store import JobNotFoundError as JobNotFoundError
from .store import JobOptions as JobOptions
from .store import JobOutcome as JobOutcome
from .store import JobState as JobState
from .store import Limiter as Limiter
from .store import LockStatus as LockStatus
from .store import MetricKind as MetricKind
from .store import Metrics as Metrics
from .store import MetricsBucket as MetricsBucket
from .store import Repeat as Repeat
from .store import RepeatRun as RepeatRun
from .store import SerializationError as SerializationError
from .store import Store as Store
from .store import StoreError as StoreError
from .store import StoreEvent as StoreEvent
from .store import UnknownStoreError as UnknownStoreError

__version__ = "0.1.0"
