"""A deliberately plain reference model of one queue, for the state machine to compare against.

Every rule is a scan over a dict of jobs: slow, but short enough to check by reading. It mirrors
the contract's documented semantics (claim order, lanes, pause, locks and the fence, stalls,
dedup, group size, cancel), not any store's data structures.
"""

from __future__ import annotations

import copy
from typing import Any

import attrs

from conveyor.store import (
    ALL_JOB_NAMES,
    TERMINAL_STATES,
    GroupFullError,
    InvalidJobStateError,
    JobState,
)

__all__ = ["JobSpec", "ModelJob", "ReferenceQueue"]


@attrs.frozen
class JobSpec:
    """What the state machine adds."""

    name: str
    priority: int = 0
    lifo: bool = False
    group: str | None = None
    max_size: int | None = None
    delay: float = 0.0
    dedup_key: str | None = None
    dedup_ttl: float | None = None


@attrs.define
class ModelJob:
    id: str
    spec: JobSpec
    state: JobState
    created: float
    order: int = 0
    delay_seq: int = 0
    delay_until: float | None = None
    lock_until: float | None = None
    token: str | None = None
    old_tokens: list[str] = attrs.field(factory=list)
    active_seq: int = 0
    attempts: int = 0
    stalled: int = 0
    dedup_until: float | None = None
    cancelled: bool = False

    @property
    def lane(self) -> str:
        return self.spec.group or ""


@attrs.define
class ReferenceQueue:
    now: float
    jobs: dict[str, ModelJob] = attrs.field(factory=dict)
    paused: set[str] = attrs.field(factory=set)
    served: dict[str, int] = attrs.field(factory=dict)
    tick: int = 0
    seq: int = 0

    # -- helpers

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _enter_waiting(self, job: ModelJob, *, head: bool = False) -> None:
        job.state = JobState.WAITING
        job.delay_until = None
        n = self._next()
        job.order = -n if head or job.spec.lifo else n

    def _enter_delayed(self, job: ModelJob, until: float) -> None:
        job.state = JobState.DELAYED
        job.delay_until = until
        job.delay_seq = self._next()

    def _unlock(self, job: ModelJob) -> None:
        job.lock_until = None
        if job.token is not None:
            job.old_tokens.append(job.token)
        job.token = None

    def _holds(self, job: ModelJob) -> bool:
        if job.dedup_until is not None:
            return self.now < job.dedup_until
        return job.state not in TERMINAL_STATES

    def in_state(self, state: JobState) -> list[ModelJob]:
        return [j for j in self.jobs.values() if j.state is state]

    def waiting_order(self) -> list[str]:
        jobs = sorted(self.in_state(JobState.WAITING), key=lambda j: (j.spec.priority, j.order))
        return [j.id for j in jobs]

    def delayed_order(self) -> list[str]:
        jobs = self.in_state(JobState.DELAYED)
        jobs.sort(key=lambda j: (j.delay_until or 0.0, j.delay_seq))
        return [j.id for j in jobs]

    def counts(self) -> dict[JobState, int]:
        return {s: len(self.in_state(s)) for s in JobState}

    # -- operations

    def add(self, job_id: str, spec: JobSpec) -> str:
        if spec.dedup_key is not None:
            for other in self.jobs.values():
                if other.spec.dedup_key == spec.dedup_key and self._holds(other):
                    return other.id
        if spec.group is not None and spec.max_size is not None:
            queued = [
                j for j in self.jobs.values()
                if j.spec.group == spec.group and j.state in (JobState.WAITING, JobState.DELAYED)
            ]  # fmt: skip
            if len(queued) >= spec.max_size:
                raise GroupFullError("q", spec.group, spec.max_size)
        job = ModelJob(job_id, spec, JobState.WAITING, self.now)
        if spec.dedup_key is not None and spec.dedup_ttl is not None:
            job.dedup_until = self.now + spec.dedup_ttl
        if spec.delay > 0:
            self._enter_delayed(job, self.now + spec.delay)
        else:
            self._enter_waiting(job)
        self.jobs[job_id] = job
        return job_id

    def add_bulk(self, items: list[tuple[str, JobSpec]]) -> list[str]:
        saved = copy.deepcopy(self)
        try:
            return [self.add(job_id, spec) for job_id, spec in items]
        except Exception:
            for field in attrs.fields(ReferenceQueue):
                setattr(self, field.name, getattr(saved, field.name))
            raise

    def claim(
        self, limit: int, *, lifo: bool, job_name: str | None, group_concurrency: int | None
    ) -> list[str]:
        if ALL_JOB_NAMES in self.paused:
            return []
        out: list[str] = []
        for _ in range(limit):
            job = self._pick(lifo, job_name, group_concurrency)
            if job is None:
                break
            self.tick += 1
            self.served[job.lane] = self.tick
            job.state = JobState.ACTIVE
            job.active_seq = self._next()
            out.append(job.id)
        return out

    def _pick(
        self, lifo: bool, job_name: str | None, group_concurrency: int | None
    ) -> ModelJob | None:
        candidates = [
            j for j in self.in_state(JobState.WAITING)
            if j.spec.name not in self.paused and (job_name is None or j.spec.name == job_name)
        ]  # fmt: skip
        if group_concurrency is not None:
            active = [j.lane for j in self.in_state(JobState.ACTIVE)]
            candidates = [
                j for j in candidates
                if j.lane == "" or active.count(j.lane) < group_concurrency
            ]  # fmt: skip
        if not candidates:
            return None
        lane = min({j.lane for j in candidates}, key=lambda lane: (self.served.get(lane, 0), lane))
        in_lane = [j for j in candidates if j.lane == lane]
        if lifo:
            return min(in_lane, key=lambda j: (j.spec.priority, -j.order))
        return min(in_lane, key=lambda j: (j.spec.priority, j.order))

    def set_token(self, job_id: str, token: str, lock: float) -> None:
        job = self.jobs[job_id]
        job.token = token
        job.lock_until = self.now + lock

    def _held(self, job_id: str, token: str) -> ModelJob | None:
        job = self.jobs.get(job_id)
        if job is None or job.state is not JobState.ACTIVE or job.token != token:
            return None
        return job

    def extend(self, job_id: str, token: str, duration: float) -> bool:
        job = self._held(job_id, token)
        if job is None:
            return False
        job.lock_until = self.now + duration
        return True

    def finish(self, kind: str, job_id: str, token: str, delay: float = 0.0) -> bool:
        job = self._held(job_id, token)
        if job is None:
            return False
        if job.cancelled and kind in ("retry", "delay"):
            kind = "failed"
        if kind != "delay":
            job.attempts += 1
        self._unlock(job)
        if kind == "completed":
            job.state = JobState.COMPLETED
        elif kind == "failed":
            job.state = JobState.FAILED
        elif delay > 0:
            self._enter_delayed(job, self.now + delay)
        else:
            self._enter_waiting(job)
        return True

    def recover_stalled(self, max_stalled_count: int) -> list[tuple[str, JobState]]:
        expired = [
            j for j in self.in_state(JobState.ACTIVE)
            if j.lock_until is not None and j.lock_until <= self.now
        ]  # fmt: skip
        expired.sort(key=lambda j: j.active_seq)
        out = []
        for job in expired:
            job.stalled += 1
            self._unlock(job)
            if job.cancelled or job.stalled > max_stalled_count:
                job.state = JobState.FAILED
            else:
                self._enter_waiting(job, head=True)
            out.append((job.id, job.state))
        return out

    def promote_due(self) -> int:
        due = [j for j in self.in_state(JobState.DELAYED) if (j.delay_until or 0.0) <= self.now]
        due.sort(key=lambda j: (j.delay_until or 0.0, j.delay_seq))
        for job in due:
            self._enter_waiting(job)
        return len(due)

    def release(self, job_id: str, token: str) -> bool:
        job = self._held(job_id, token)
        if job is None:
            return False
        self._unlock(job)
        self._enter_waiting(job, head=True)
        return True

    def cancel(self, job_id: str) -> JobState | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.state in TERMINAL_STATES:
            raise InvalidJobStateError(job.state.value)
        job.cancelled = True
        if job.state is not JobState.ACTIVE:
            job.state = JobState.FAILED
        return job.state

    def remove(self, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        if job is None:
            return False
        if job.state is JobState.ACTIVE:
            raise InvalidJobStateError("active")
        del self.jobs[job_id]
        return True

    def snapshot(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        return {
            "state": job.state,
            "attempts_made": job.attempts,
            "stalled_count": job.stalled,
            "cancelled": job.cancelled,
            "locked": job.token is not None,
        }
