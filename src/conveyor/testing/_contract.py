"""The store contract suite: every rule of :class:`conveyor.store.Store`, one check each.

Run it from any test runner::

    from conveyor.testing import contract_checks

    @pytest.mark.parametrize("check", contract_checks(), ids=lambda c: c.name)
    async def test_contract(check, my_store_factory):
        async with my_store_factory() as fixture:
            await check(fixture)

or all at once with :func:`check_store`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import anyio
import attrs

from conveyor.store import (
    ALL_JOB_NAMES,
    ArgumentTypeError,
    Backoff,
    Deduplication,
    DuplicateJobError,
    FetchOptions,
    Group,
    GroupFullError,
    InvalidArgumentError,
    InvalidJobStateError,
    JobData,
    JobNotFoundError,
    JobOutcome,
    JobState,
    Limiter,
    LockStatus,
    SerializationError,
    StoreError,
    StoreEvent,
)

from ._harness import (
    ContractViolation,
    Recorder,
    StoreFactory,
    StoreFixture,
    claim,
    claim_ids,
    expect,
    expect_eq,
    expect_raises,
    make_job,
)

__all__ = ["ContractCheck", "check_store", "contract_checks"]

CheckFn = Callable[[StoreFixture], Awaitable[None]]


@attrs.frozen
class ContractCheck:
    """One rule of the contract, checked against a fixture: ``await check(fixture)``.

    :param name: the check's name (its function's), for test ids and messages.
    :param doc: the rule it checks, in a sentence.
    :param run: the coroutine function that checks it, raising :class:`ContractViolation`.
    """

    name: str
    doc: str
    run: CheckFn

    async def __call__(self, fixture: StoreFixture) -> None:
        await self.run(fixture)


_CHECKS: list[ContractCheck] = []


def _check(fn: CheckFn) -> CheckFn:
    _CHECKS.append(
        ContractCheck(fn.__name__.removeprefix("check_"), (fn.__doc__ or "").strip(), fn)
    )
    return fn


def contract_checks() -> list[ContractCheck]:
    """Every check of the contract suite, to run one by one.

    Say, as parametrized tests::

        @pytest.mark.anyio
        @pytest.mark.parametrize("check", contract_checks(), ids=lambda c: c.name)
        async def test_contract(check: ContractCheck) -> None:
            async with my_store() as fixture:
                await check(fixture)
    """
    return list(_CHECKS)


async def check_store(factory: StoreFactory) -> None:
    """Run every check, each on a fresh store from ``factory``; raise on the first violation.

    :raises ContractViolation: the first rule the store broke, its message starting with the
        check's name.
    """
    for check in _CHECKS:
        async with factory() as fixture:
            try:
                await check(fixture)
            except ContractViolation as exc:
                raise ContractViolation(f"[{check.name}] {exc}") from exc


async def _add(fx: StoreFixture, queue: str = "q", name: str = "job", **kw: object) -> JobData:
    job = make_job(queue, name, **kw)  # type: ignore[arg-type]
    await fx.store.save_job(job)
    stored = await fx.store.get_job(queue, job.id)
    expect(stored is not None, f"job {job.id} was saved but cannot be read back")
    assert stored is not None
    return stored


async def _get(fx: StoreFixture, job: JobData) -> JobData:
    stored = await fx.store.get_job(job.queue_name, job.id)
    expect(stored is not None, f"job {job.queue_name}:{job.id} is missing")
    assert stored is not None
    return stored


async def _state(fx: StoreFixture, job: JobData) -> JobState | None:
    stored = await fx.store.get_job(job.queue_name, job.id)
    return None if stored is None else stored.state


# -- lifecycle and reading ------------------------------------------------------------------------


@_check
async def check_save_and_get(fx: StoreFixture) -> None:
    """save_job stores the caller's fields, sets created_at by the store's clock, starts waiting."""
    now = await fx.store.now()
    job = make_job("q", "send", {"to": "a@example.com", "n": [1, 2.5, None, True]}, priority=3)
    saved = await fx.store.save_job(job)
    expect_eq(saved.id, job.id, "save_job's return value")
    stored = await _get(fx, job)
    expect_eq(saved, stored, "save_job returns the job as stored")
    expect_eq(stored.name, "send", "name")
    expect_eq(stored.data, job.data, "data")
    expect_eq(stored.opts, job.opts, "opts")
    expect_eq(stored.state, JobState.WAITING, "state")
    expect_eq(stored.attempts_made, 0, "attempts_made")
    expect(stored.created_at is not None, "created_at is set")
    assert stored.created_at is not None
    expect(abs((stored.created_at - now).total_seconds()) < 5, "created_at is the store's now")
    expect_eq(stored.lock_token, None, "lock_token of a waiting job")
    expect_eq(await fx.store.get_job("q", "nope"), None, "get_job of an unknown id")
    expect_eq(await fx.store.get_job("other", job.id), None, "get_job in another queue")


@_check
async def check_records_are_copies(fx: StoreFixture) -> None:
    """Changing a record the store handed out, or one handed in, never changes the store."""
    job = make_job(data={"list": [1]})
    await fx.store.save_job(job)
    job.data["list"].append("caller")
    got = await _get(fx, job)
    got.data["list"].append("reader")
    got.logs.append("x")
    again = await _get(fx, job)
    expect_eq(again.data, {"list": [1]}, "data after mutating copies")
    expect_eq(again.logs, [], "logs after mutating a copy")
    [claimed] = await claim(fx.store)
    claimed.data["list"].append("claimer")
    expect_eq((await _get(fx, job)).data, {"list": [1]}, "data after mutating a claimed copy")


@_check
async def check_find_job_by_id(fx: StoreFixture) -> None:
    """find_job_by_id looks in every queue."""
    job = await _add(fx, "elsewhere")
    found = await fx.store.find_job_by_id(job.id)
    expect(found is not None and found.queue_name == "elsewhere", "found in its queue")
    expect_eq(await fx.store.find_job_by_id("missing"), None, "unknown id")


@_check
async def check_duplicate_id(fx: StoreFixture) -> None:
    """A second job with the same id in a queue raises DuplicateJobError, changing nothing."""
    job = await _add(fx, data={"v": 1}, job_id="fixed")
    clash = make_job(data={"v": 2}, job_id="fixed")
    await expect_raises(DuplicateJobError, lambda: fx.store.save_job(clash), "duplicate id")
    expect_eq((await _get(fx, job)).data, {"v": 1}, "the first job's data")
    other_queue = make_job("q2", data={"v": 3}, job_id="fixed")
    expect_eq((await fx.store.save_job(other_queue)).id, "fixed", "same id in another queue")


@_check
async def check_save_bulk(fx: StoreFixture) -> None:
    """save_bulk returns the stored jobs in order; a refused job leaves nothing of the call."""
    jobs = [make_job(data={"i": i}) for i in range(5)]
    saved = await fx.store.save_bulk(jobs)
    expect_eq([j.id for j in saved], [j.id for j in jobs], "ids")
    expect_eq(saved[3], await _get(fx, jobs[3]), "a returned job is the stored one")
    expect_eq(await fx.store.count_jobs("q", JobState.WAITING), 5, "waiting count")
    batch = [make_job(data={"i": 10}), make_job(job_id=jobs[0].id)]
    await expect_raises(DuplicateJobError, lambda: fx.store.save_bulk(batch), "bulk duplicate")
    expect_eq(await fx.store.get_job("q", batch[0].id), None, "first job of a refused bulk")
    expect_eq(await fx.store.count_jobs("q", JobState.WAITING), 5, "waiting after refused bulk")
    expect_eq(await fx.store.save_bulk([]), [], "empty bulk")


@_check
async def check_bad_input(fx: StoreFixture) -> None:
    """Bad arguments raise a typed error naming the argument, and store nothing."""
    s = fx.store
    bad_data = make_job(data={"when": {1, 2}})
    await expect_raises(
        SerializationError, lambda: s.save_job(bad_data), "set in data", argument="data"
    )
    nan = make_job(data=[float("nan")])
    await expect_raises(SerializationError, lambda: s.save_job(nan), "NaN in data", argument="data")
    int_keys = make_job(data={1: "a"})
    await expect_raises(
        SerializationError, lambda: s.save_job(int_keys), "int key", argument="data"
    )
    await expect_raises(ArgumentTypeError, lambda: s.save_job("job"), "not a JobData")  # type: ignore[arg-type]
    await expect_raises(
        InvalidArgumentError, lambda: s.save_bulk([make_job(), bad_data]), "bulk with bad data"
    )
    expect_eq(await s.list_queues(), [], "queues after refused input")
    await expect_raises(
        InvalidArgumentError,
        lambda: s.count_jobs("q", "sleeping"),  # type: ignore[arg-type]
        "unknown state",
        argument="state",
    )
    await expect_raises(
        InvalidArgumentError, lambda: s.fetch_next_jobs("q", "w", -1, 1), "negative lock",
        argument="lock_duration",
    )  # fmt: skip
    await expect_raises(
        InvalidArgumentError,
        lambda: s.fetch_next_jobs("q", "w", 30, 0),
        "limit 0",
        argument="limit",
    )
    await expect_raises(
        InvalidArgumentError, lambda: s.get_job("", "x"), "empty queue name", argument="queue_name"
    )
    job = await _add(fx)
    await expect_raises(
        InvalidArgumentError, lambda: s.update_job("q", job.id, {"id": "other"}), "readonly field",
        argument="updates.id",
    )  # fmt: skip
    await expect_raises(
        InvalidArgumentError, lambda: s.update_job("q", job.id, {"colour": 1}), "unknown field",
        argument="updates.colour",
    )  # fmt: skip
    await expect_raises(
        InvalidArgumentError, lambda: s.update_job("q", job.id, {"attempts_made": -1}),
        "negative attempts", argument="updates.attempts_made",
    )  # fmt: skip
    await expect_raises(
        SerializationError, lambda: s.update_job("q", job.id, {"data": object()}), "bad data",
    )  # fmt: skip
    await expect_raises(
        InvalidArgumentError, lambda: s.clean("q", JobState.ACTIVE, 0), "clean active"
    )
    await expect_raises(
        InvalidArgumentError, lambda: s.recover_stalled_jobs("q", -1), "negative max_stalled_count",
        argument="max_stalled_count",
    )  # fmt: skip
    expect_eq(await _get(fx, job), job, "the job after refused updates")
    child = make_job(parent=make_job())
    await expect_raises(
        InvalidArgumentError, lambda: s.save_job(child), "a child outside a flow",
        argument="job.parent_id",
    )  # fmt: skip
    await expect_raises(
        InvalidArgumentError, lambda: s.list_jobs("q", JobState.WAITING, -1, 5), "negative start",
        argument="start",
    )  # fmt: skip
    await expect_raises(
        InvalidArgumentError, lambda: s.extend_locks("q", {job.id: "t"}, -5), "negative duration",
        argument="duration",
    )  # fmt: skip
    await expect_raises(
        InvalidArgumentError, lambda: s.clean("q", JobState.FAILED, "-1s"), "negative grace",
        argument="grace",
    )  # fmt: skip
    await expect_raises(
        ArgumentTypeError, lambda: s.finish_jobs(["done"]), "not an outcome",  # type: ignore[list-item]
        argument="outcomes[0]",
    )  # fmt: skip
    await expect_raises(
        InvalidArgumentError, lambda: s.pause_job_name("q", ""), "empty job name",
        argument="job_name",
    )  # fmt: skip
    await expect_raises(
        ArgumentTypeError, lambda: s.fetch_next_jobs("q", "w", 30, 1, {"lifo": True}),  # type: ignore[arg-type]
        "options as a dict", argument="opts",
    )  # fmt: skip
    expect_eq(await _get(fx, job), job, "the job after refused calls")


@_check
async def check_disconnect(fx: StoreFixture) -> None:
    """A disconnected store refuses work with StoreError; disconnect is idempotent."""
    await fx.store.disconnect()
    await expect_raises(StoreError, lambda: fx.store.get_job("q", "x"), "use after disconnect")
    await fx.store.disconnect()


# -- claiming -------------------------------------------------------------------------------------


@_check
async def check_claim_sets_lock(fx: StoreFixture) -> None:
    """A claim makes the job active with processed_at, lock_until, locked_by and a fresh token."""
    a = await _add(fx)
    b = await _add(fx)
    [job] = await claim(fx.store, worker="w-7", lock=12.5)
    expect_eq(job.id, a.id, "claimed job")
    expect_eq(job.state, JobState.ACTIVE, "state")
    expect_eq(job.locked_by, "w-7", "locked_by")
    assert job.processed_at is not None
    assert job.lock_until is not None
    expect_eq(job.lock_until - job.processed_at, timedelta(seconds=12.5), "lock length")
    expect(job.lock_token, "a lock token")
    expect_eq(await _get(fx, a), job, "the stored record equals the claimed copy")
    [second] = await claim(fx.store, worker="w-7")
    expect_eq(second.id, b.id, "second claim")
    expect(second.lock_token != job.lock_token, "tokens differ between claims")
    expect_eq(await claim(fx.store), [], "nothing left to claim")
    expect_eq(await fx.store.get_active_count("q"), 2, "active count")


@_check
async def check_fetch_next_job(fx: StoreFixture) -> None:
    """fetch_next_job claims one job, or returns None when none can be claimed."""
    a = await _add(fx, name="a")
    job = await fx.store.fetch_next_job("q", "w", 30)
    assert job is not None
    expect_eq((job.id, job.state), (a.id, JobState.ACTIVE), "claimed job")
    await _add(fx, name="b")
    expect_eq(await fx.store.fetch_next_job("q", "w", 30, FetchOptions(job_name="a")), None,
              "nothing of that name")  # fmt: skip
    expect_eq(await fx.store.fetch_next_job("empty", "w", 30), None, "an empty queue")


@_check
async def check_connect_once(fx: StoreFixture) -> None:
    """A store connects once: connecting a connected store raises StoreError."""
    await expect_raises(StoreError, fx.store.connect, "second connect")
    await _add(fx)
    expect_eq(await fx.store.count_jobs("q", JobState.WAITING), 1, "still usable")


@_check
async def check_update_group_of_active_job(fx: StoreFixture) -> None:
    """Changing an active job's group moves its count to the new group."""
    job = await _add(fx, group=Group("a"))
    await claim(fx.store)
    await fx.store.update_job("q", job.id, {"opts": attrs.evolve(job.opts, group=Group("b"))})
    expect_eq(await fx.store.get_group_active_count("q", "a"), 0, "old group")
    expect_eq(await fx.store.get_group_active_count("q", "b"), 1, "new group")


@_check
async def check_claim_order_priority_fifo(fx: StoreFixture) -> None:
    """Lower priority first; within a priority, oldest first."""
    jobs = [await _add(fx, priority=p, data=i) for i, p in enumerate([5, 1, 5, 0, 1])]
    ids = await claim_ids(fx.store, limit=10)
    expect_eq(ids, [jobs[i].id for i in (3, 1, 4, 0, 2)], "claim order")


@_check
async def check_claim_order_lifo(fx: StoreFixture) -> None:
    """fetch lifo takes the newest of the lowest priority; opts.lifo puts a job at the head."""
    a, b, c = [await _add(fx) for _ in range(3)]
    urgent = await _add(fx, priority=-1)
    ids = await claim_ids(fx.store, limit=4, lifo=True)
    expect_eq(ids, [urgent.id, c.id, b.id, a.id], "lifo fetch order")
    d = await _add(fx, "q2")
    e = await _add(fx, "q2")
    f = await _add(fx, "q2", lifo=True)
    expect_eq(await claim_ids(fx.store, "q2", 3), [f.id, d.id, e.id], "opts.lifo order")


@_check
async def check_claim_batch_and_name_filter(fx: StoreFixture) -> None:
    """A batch claim takes up to limit jobs in order; job_name limits to one name."""
    jobs = [await _add(fx, name="a" if i % 2 else "b") for i in range(6)]
    ids = await claim_ids(fx.store, limit=2, job_name="a")
    expect_eq(ids, [jobs[1].id, jobs[3].id], "name-filtered claim")
    ids = await claim_ids(fx.store, limit=10)
    expect_eq(ids, [jobs[i].id for i in (0, 2, 4, 5)], "the rest")


@_check
async def check_pause_queue_and_names(fx: StoreFixture) -> None:
    """A paused queue hands out nothing; a paused name is skipped; resume undoes both."""
    a = await _add(fx, name="a")
    b = await _add(fx, name="b")
    await fx.store.pause_job_name("q", ALL_JOB_NAMES)
    expect_eq(await claim(fx.store), [], "claim from a paused queue")
    expect_eq(await fx.store.get_paused_job_names("q"), [ALL_JOB_NAMES], "paused names")
    await fx.store.resume_job_name("q", ALL_JOB_NAMES)
    await fx.store.pause_job_name("q", "a")
    await fx.store.pause_job_name("q", "a")
    expect_eq(await fx.store.get_paused_job_names("q"), ["a"], "paused names (idempotent)")
    expect_eq(await claim_ids(fx.store, limit=5), [b.id], "claim skips paused name")
    expect_eq(await claim(fx.store, job_name="a"), [], "claim of a paused name")
    await fx.store.resume_job_name("q", "a")
    expect_eq(await claim_ids(fx.store), [a.id], "claim after resume")
    expect_eq(await fx.store.get_paused_job_names("q"), [], "no paused names")


@_check
async def check_paused_names_keep_the_claim_order(fx: StoreFixture) -> None:
    """With a name paused, the other names' jobs are claimed in claim order across names
    (priority, then age; newest first with ``lifo``), in the plain queue and in a group."""
    jobs = [
        make_job(name=name, priority=priority, group=Group("g") if grouped else None)
        for name, priority, grouped in [
            ("a", 0, False), ("b", 0, False), ("a", -5, False), ("c", -1, False),
            ("b", 1, False), ("c", 0, False), ("a", 0, True), ("b", 0, True),
        ]
    ]  # fmt: skip
    ids = [job.id for job in await fx.store.save_bulk(jobs)]
    await fx.store.pause_job_name("q", "a")
    expect_eq(
        await claim_ids(fx.store, limit=2, exclude_groups=("g",)),
        [ids[3], ids[1]],
        "claim order across names, one paused",
    )
    expect_eq(
        await claim_ids(fx.store, limit=10, lifo=True, exclude_groups=("g",)),
        [ids[5], ids[4]],
        "lifo claim order across names, one paused",
    )
    expect_eq(await claim_ids(fx.store, limit=10), [ids[7]], "a group's jobs, one name paused")
    await fx.store.resume_job_name("q", "a")
    expect_eq(await claim_ids(fx.store, limit=10), [ids[2], ids[6], ids[0]], "after resume")


@_check
async def check_concurrent_claimers(fx: StoreFixture) -> None:
    """Many claimers at once never receive the same job, and together receive every job."""
    ids = [job.id for job in await fx.store.save_bulk([make_job(data=i) for i in range(120)])]
    seen: list[str] = []

    async def claimer(worker: str) -> None:
        while batch := await claim(fx.store, limit=3, worker=worker):
            seen.extend(job.id for job in batch)

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(claimer, f"w{n}")
    expect_eq(len(seen), len(set(seen)), "claims (no job twice)")
    expect_eq(sorted(seen), sorted(ids), "claimed jobs")


# -- locks, stalls and the fence ----------------------------------------------------------------


_HOSTILE = 'it\'s "quoted"; DROP TABLE jobs; -- \u00fcn\u00efc\u00f8d\u00e9 \u2603 %s $1 ? \\'
"""A name that is trouble for any store that splices names into its query language."""


@_check
async def check_names_are_only_data(fx: StoreFixture) -> None:
    """Queue, job, group and id names with quotes, semicolons, placeholders, unicode and 200
    characters work everywhere: they are data, never part of a query."""
    queue = (_HOSTILE + "q" * 200)[:200]
    name = (_HOSTILE + "n" * 200)[:200]
    group = (_HOSTILE + "g" * 200)[:200]
    job = make_job(queue, name, {"k": _HOSTILE}, job_id=(_HOSTILE + "i" * 200)[:200])
    job.opts = attrs.evolve(job.opts, group=Group(group))
    await fx.store.save_job(job)
    stored = await _get(fx, job)
    expect_eq((stored.queue_name, stored.name, stored.group_id, stored.data),
              (queue, name, group, {"k": _HOSTILE}), "names read back")  # fmt: skip
    expect_eq(await fx.store.get_waiting_group_count(queue, group), 1, "group count")
    await fx.store.pause_job_name(queue, name)
    expect_eq(await fx.store.get_paused_job_names(queue), [name], "paused name")
    expect_eq(await claim(fx.store, queue=queue), [], "a paused name is not claimed")
    await fx.store.resume_job_name(queue, name)
    [claimed] = await claim(fx.store, queue=queue, worker=_HOSTILE)
    expect_eq(claimed.id, job.id, "claimed")
    assert claimed.lock_token is not None
    [done] = await fx.store.finish_jobs([JobOutcome.completed(claimed, _HOSTILE)])
    expect(done, "finished")
    expect_eq((await _get(fx, job)).returnvalue, _HOSTILE, "return value")
    expect(queue in await fx.store.list_queues(), "list_queues names the queue")
    expect_eq(await fx.store.count_jobs(queue, JobState.COMPLETED), 1, "count")


_NUMBERS = {"huge": 1e300, "tiny": 5e-324, "third": 1 / 3, "tenth": 0.1, "whole": 2.0,
            "big": 2**70, "negative": -(2**63), "zero": 0}  # fmt: skip


@_check
async def check_numbers_read_back_exactly(fx: StoreFixture) -> None:
    """Data, progress and return values keep every number exactly, float or int: a float
    with an exponent stays a float, a big int stays an int."""
    await fx.store.save_job(make_job("q", "n", dict(_NUMBERS), job_id="numbers"))
    stored = await fx.store.get_job("q", "numbers")
    assert stored is not None
    for key, value in _NUMBERS.items():
        got = stored.data[key]
        expect((type(got), got) == (type(value), value), f"data[{key!r}]: {got!r} != {value!r}")
    [job] = await claim(fx.store)
    await fx.store.update_job("q", job.id, {"progress": dict(_NUMBERS)})
    await fx.store.finish_jobs([JobOutcome.completed(job, [1e300, 2**70])])
    done = await _get(fx, job)
    expect_eq(done.progress, _NUMBERS, "progress")
    expect_eq([type(v) for v in done.returnvalue], [float, int], "return value types")
    expect_eq(done.returnvalue, [1e300, 2**70], "return value")


@_check
async def check_extend_lock(fx: StoreFixture) -> None:
    """extend_lock moves lock_until with the right token and refuses a wrong one."""
    await _add(fx)
    [job] = await claim(fx.store, lock=10)
    assert job.lock_token is not None
    await fx.advance(4)
    expect(await fx.store.extend_lock("q", job.id, job.lock_token, 10), "extend with token")
    now = await fx.store.now()
    stored = await _get(fx, job)
    assert stored.lock_until is not None
    expect_eq(stored.lock_until, now + timedelta(seconds=10), "lock_until after extension")
    expect(not await fx.store.extend_lock("q", job.id, "not-the-token", 10), "wrong token refused")
    statuses = await fx.store.extend_locks("q", {job.id: job.lock_token, "ghost": "t"}, 10)
    expect_eq(statuses, {job.id: LockStatus.EXTENDED, "ghost": LockStatus.LOST}, "extend_locks")


@_check
async def check_stalled_recovery(fx: StoreFixture) -> None:
    """An expired lock makes the job stalled; recovery returns it to the head of waiting."""
    first = await _add(fx)
    second = await _add(fx)
    [job] = await claim(fx.store, lock=5)
    expect_eq(await fx.store.get_stalled_jobs("q"), [], "stalled before expiry")
    await fx.advance(6)
    stalled = await fx.store.get_stalled_jobs("q")
    expect_eq([j.id for j in stalled], [first.id], "stalled after expiry")
    recovered = await fx.store.recover_stalled_jobs("q", max_stalled_count=1)
    expect_eq([(j.id, j.state, j.stalled_count) for j in recovered],
              [(first.id, JobState.WAITING, 1)], "recovered")  # fmt: skip
    stored = await _get(fx, first)
    expect_eq((stored.lock_token, stored.attempts_made), (None, 0), "lock cleared, no attempt")
    expect_eq(await claim_ids(fx.store), [first.id], "a recovered job goes first")
    await fx.advance(31)
    [failed] = await fx.store.recover_stalled_jobs("q", max_stalled_count=1)
    expect_eq((failed.state, failed.stalled_count), (JobState.FAILED, 2), "stalled too often")
    expect(failed.failed_reason and "stalled" in failed.failed_reason, "failed_reason says stalled")
    expect_eq(await _state(fx, second), JobState.WAITING, "the other job")
    del job


@_check
async def check_fence(fx: StoreFixture) -> None:
    """A worker whose lock was taken over cannot finish, extend or release the job."""
    await _add(fx)
    [old] = await claim(fx.store, worker="a", lock=5)
    await fx.advance(6)
    await fx.store.recover_stalled_jobs("q", 5)
    [new] = await claim(fx.store, worker="b", lock=30)
    assert old.lock_token is not None
    assert new.lock_token is not None
    expect(old.lock_token != new.lock_token, "a new claim has a new token")
    late = [JobOutcome.completed(old, "stale")]
    expect_eq(await fx.store.finish_jobs(late), [False], "stale completion")
    expect(not await fx.store.extend_lock("q", old.id, old.lock_token, 30), "stale extension")
    expect(not await fx.store.release_lock("q", old.id, old.lock_token), "stale release")
    stored = await _get(fx, new)
    expect_eq((stored.state, stored.locked_by, stored.returnvalue), (JobState.ACTIVE, "b", None),
              "job after stale writes")  # fmt: skip
    expect_eq(
        await fx.store.finish_jobs([JobOutcome.completed(new, "fresh")]), [True], "completion"
    )
    expect_eq(await fx.store.finish_jobs([JobOutcome.completed(new, "again")]), [False], "twice")
    expect_eq((await _get(fx, new)).returnvalue, "fresh", "returnvalue")


@_check
async def check_release_lock(fx: StoreFixture) -> None:
    """release_lock returns a claimed job to the head of waiting without counting an attempt."""
    a = await _add(fx)
    b = await _add(fx)
    [job] = await claim(fx.store)
    assert job.lock_token is not None
    expect(await fx.store.release_lock("q", job.id, job.lock_token), "release")
    stored = await _get(fx, a)
    expect_eq((stored.state, stored.attempts_made, stored.lock_token), (JobState.WAITING, 0, None),
              "released job")  # fmt: skip
    expect_eq(await claim_ids(fx.store, limit=2), [a.id, b.id], "released job goes first")


# -- outcomes --------------------------------------------------------------------------------------


@_check
async def check_finish_completed_and_failed(fx: StoreFixture) -> None:
    """Outcomes record results, count the attempt and keep an attempt record."""
    a = await _add(fx)
    b = await _add(fx)
    [ca, cb] = await claim(fx.store, limit=2, worker="w")
    now = await fx.store.now()
    results = await fx.store.finish_jobs(
        [JobOutcome.completed(ca, {"ok": 1}), JobOutcome.failed(cb, "boom", stacktrace="tb")]
    )
    expect_eq(results, [True, True], "finish results")
    done = await _get(fx, a)
    expect_eq((done.state, done.returnvalue, done.attempts_made),
              (JobState.COMPLETED, {"ok": 1}, 1),
              "completed job")  # fmt: skip
    expect_eq(done.completed_at, now, "completed_at")
    expect_eq([(r.attempt, r.outcome, r.worker_id) for r in done.attempt_logs],
              [(1, "completed", "w")], "attempt_logs")  # fmt: skip
    bad = await _get(fx, b)
    expect_eq((bad.state, bad.failed_reason, bad.stacktrace, bad.attempts_made),
              (JobState.FAILED, "boom", ["tb"], 1), "failed job")  # fmt: skip
    expect_eq(bad.failed_at, now, "failed_at")
    expect_eq(bad.lock_token, None, "no lock after finishing")


@_check
async def check_finish_retry_and_delay(fx: StoreFixture) -> None:
    """retry counts an attempt and waits (or is delayed); delay moves without counting."""
    a = await _add(fx)
    [job] = await claim(fx.store)
    await fx.store.finish_jobs([JobOutcome.retry(job, "flaky", delay=0)])
    stored = await _get(fx, a)
    expect_eq((stored.state, stored.attempts_made, stored.failed_reason),
              (JobState.WAITING, 1, "flaky"), "retried at once")  # fmt: skip
    [job] = await claim(fx.store)
    await fx.store.finish_jobs([JobOutcome.retry(job, "flaky", delay=10)])
    now = await fx.store.now()
    stored = await _get(fx, a)
    expect_eq((stored.state, stored.attempts_made), (JobState.DELAYED, 2), "retried later")
    expect_eq(stored.delay_until, now + timedelta(seconds=10), "delay_until")
    await fx.advance(10)
    expect_eq(await fx.store.promote_delayed_jobs("q"), 1, "promoted")
    [job] = await claim(fx.store)
    await fx.store.finish_jobs([JobOutcome.delay_job(job, "1m")])
    stored = await _get(fx, a)
    expect_eq((stored.state, stored.attempts_made), (JobState.DELAYED, 2), "delayed, not counted")


@_check
async def check_remove_on_finish(fx: StoreFixture) -> None:
    """remove_on_complete / remove_on_fail: True removes; a count keeps the newest N."""
    gone = await _add(fx, remove_on_complete=True)
    [job] = await claim(fx.store)
    await fx.store.finish_jobs([JobOutcome.completed(job, 1)])
    expect_eq(await fx.store.get_job("q", gone.id), None, "removed on complete")
    kept = [await _add(fx, remove_on_complete=2) for _ in range(3)]
    for job in await claim(fx.store, limit=3):
        await fx.store.finish_jobs([JobOutcome.completed(job)])
        await fx.advance(1)
    expect_eq([j.id for j in await fx.store.list_jobs("q", JobState.COMPLETED)],
              [kept[2].id, kept[1].id], "the newest two kept")  # fmt: skip
    failing = await _add(fx, remove_on_fail=True)
    [job] = await claim(fx.store)
    await fx.store.finish_jobs([JobOutcome.failed(job, "x")])
    expect_eq(await fx.store.get_job("q", failing.id), None, "removed on fail")


# -- deduplication ---------------------------------------------------------------------------------


@_check
async def check_dedup_until_finished(fx: StoreFixture) -> None:
    """Without a TTL, a job holds its key until it completes or fails."""
    first = make_job(dedup_key="k", deduplication=Deduplication("k"))
    expect_eq((await fx.store.save_job(first)).id, first.id, "first add")
    second = make_job(dedup_key="k", deduplication=Deduplication("k"))
    expect_eq((await fx.store.save_job(second)).id, first.id, "deduplicated add returns the holder")
    expect_eq(await fx.store.get_job("q", second.id), None, "the duplicate was not stored")
    holder = await fx.store.find_by_deduplication_key("q", "k")
    expect(holder is not None and holder.id == first.id, "find_by_deduplication_key")
    [job] = await claim(fx.store)
    expect_eq((await fx.store.save_job(make_job(dedup_key="k"))).id, first.id, "held while active")
    await fx.store.finish_jobs([JobOutcome.completed(job)])
    expect_eq(await fx.store.find_by_deduplication_key("q", "k"), None, "released on completion")
    third = make_job(dedup_key="k")
    expect_eq((await fx.store.save_job(third)).id, third.id, "a new holder after completion")
    other = make_job("q2", dedup_key="k")
    expect_eq((await fx.store.save_job(other)).id, other.id, "keys are per queue")


@_check
async def check_dedup_ttl(fx: StoreFixture) -> None:
    """With a TTL, the key is held for the TTL whatever the state, then released."""
    first = make_job(dedup_key="k", deduplication=Deduplication("k", ttl=10))
    await fx.store.save_job(first)
    [job] = await claim(fx.store)
    await fx.store.finish_jobs([JobOutcome.completed(job)])
    expect_eq(
        (await fx.store.save_job(make_job(dedup_key="k"))).id, first.id, "held after completion"
    )
    await fx.advance(9.5)
    expect_eq(
        (await fx.store.save_job(make_job(dedup_key="k"))).id, first.id, "held before the TTL"
    )
    await fx.advance(0.5)
    expect_eq(await fx.store.find_by_deduplication_key("q", "k"), None, "released at the TTL")
    later = make_job(dedup_key="k")
    expect_eq((await fx.store.save_job(later)).id, later.id, "a new holder after the TTL")


@_check
async def check_dedup_in_bulk(fx: StoreFixture) -> None:
    """Within one bulk add, a later job with the same key gets the earlier one's id."""
    jobs = [make_job(dedup_key="k"), make_job(dedup_key="k"), make_job(dedup_key="j")]
    saved = await fx.store.save_bulk(jobs)
    expect_eq([j.id for j in saved], [jobs[0].id, jobs[0].id, jobs[2].id], "bulk ids")
    expect_eq(saved[1], saved[0], "the deduplicated job gets the holder as stored")
    expect_eq(await fx.store.count_jobs("q", JobState.WAITING), 2, "stored jobs")


# -- delays ----------------------------------------------------------------------------------------


@_check
async def check_delayed_promotion(fx: StoreFixture) -> None:
    """A delayed job waits for its time; promotion moves only the due ones, oldest due first."""
    now = await fx.store.now()
    late = await _add(fx, delay=20)
    soon = await _add(fx, delay="5s")
    expect_eq(late.state, JobState.DELAYED, "state of a delayed job")
    expect_eq(late.delay_until, late.created_at and late.created_at + timedelta(seconds=20),
              "delay_until")  # fmt: skip
    expect_eq(await fx.store.get_next_delayed_timestamp("q"), now + timedelta(seconds=5),
              "next delayed timestamp")  # fmt: skip
    expect_eq(await claim(fx.store), [], "delayed jobs are not claimed")
    expect_eq(await fx.store.promote_delayed_jobs("q"), 0, "nothing due yet")
    await fx.advance(5)
    expect_eq(await fx.store.promote_delayed_jobs("q"), 1, "one due")
    expect_eq(await claim_ids(fx.store), [soon.id], "the promoted job")
    expect_eq(await fx.store.promote_jobs("q"), 1, "promote_jobs promotes the rest now")
    expect_eq(await _state(fx, late), JobState.WAITING, "state after promote_jobs")
    expect_eq(await fx.store.get_next_delayed_timestamp("q"), None, "no delayed jobs")
    past = make_job()
    past.delay_until = now - timedelta(seconds=1)
    await fx.store.save_job(past)
    expect_eq(await _state(fx, past), JobState.WAITING, "a delay_until in the past")
    future = make_job()
    future.delay_until = now + timedelta(hours=1)
    await fx.store.save_job(future)
    expect_eq(await _state(fx, future), JobState.DELAYED, "an absolute delay_until")


# -- groups and limits -----------------------------------------------------------------------------


@_check
async def check_group_round_robin(fx: StoreFixture) -> None:
    """Lanes (each group, and the jobs without one) are served least recently served first."""
    a = [await _add(fx, group=Group("a")) for _ in range(3)]
    b = [await _add(fx, group=Group("b")) for _ in range(2)]
    plain = [await _add(fx) for _ in range(2)]
    ids = await claim_ids(fx.store, limit=7)
    expected = [plain[0], a[0], b[0], plain[1], a[1], b[1], a[2]]
    expect_eq(ids, [j.id for j in expected], "round-robin order")
    c = await _add(fx, group=Group("c"))
    a4 = await _add(fx, group=Group("a"))
    expect_eq(await claim_ids(fx.store, limit=2), [c.id, a4.id], "a new group goes first")


@_check
async def check_group_turns_past_many_full_groups(fx: StoreFixture) -> None:
    """A claim takes the lanes in turn order however many there are: it passes over lanes at
    their group concurrency (40 here, more than a claim reads at once), serves the lanes
    behind them, and gives the lane of jobs without a group its place among them."""
    full = [[await _add(fx, group=Group(f"g{n:02}")) for _ in range(2)] for n in range(40)]
    later = [[await _add(fx, group=Group(f"x{n}")) for _ in range(2)] for n in range(3)]
    first = await claim(fx.store, limit=43, group_concurrency=1)
    expect_eq([j.id for j in first], [g[0].id for g in full] + [x[0].id for x in later],
              "one job a group, in lane order")  # fmt: skip
    plain = [await _add(fx) for _ in range(2)]
    expect_eq(await claim_ids(fx.store, limit=1, group_concurrency=1), [plain[0].id],
              "the lane without a group, never served, goes first")  # fmt: skip
    await fx.store.finish_jobs([JobOutcome.completed(job) for job in first[40:]])
    expect_eq(await claim_ids(fx.store, limit=4, group_concurrency=1),
              [x[1].id for x in later] + [plain[1].id],
              "past 40 full groups, then the lane without a group, served last")  # fmt: skip


@_check
async def check_group_concurrency(fx: StoreFixture) -> None:
    """group_concurrency caps the active jobs of each group, across claims."""
    a = [await _add(fx, group=Group("a")) for _ in range(3)]
    b = [await _add(fx, group=Group("b")) for _ in range(2)]
    first = await claim(fx.store, limit=10, group_concurrency=1)
    expect_eq([j.id for j in first], [a[0].id, b[0].id], "one per group")
    expect_eq(await claim(fx.store, limit=10, group_concurrency=1), [], "groups are full")
    expect_eq(await fx.store.get_group_active_count("q", "a"), 1, "active in a")
    expect_eq(await fx.store.get_waiting_group_count("q", "a"), 2, "waiting in a")
    await fx.store.finish_jobs([JobOutcome.completed(first[0])])
    expect_eq(await claim_ids(fx.store, limit=10, group_concurrency=1), [a[1].id], "a frees a slot")
    expect_eq(await claim_ids(fx.store, limit=10, exclude_groups={"a"}), [b[1].id],
              "exclude_groups")  # fmt: skip


@_check
async def check_group_max_size(fx: StoreFixture) -> None:
    """A group holding max_size waiting or delayed jobs refuses more with GroupFullError."""
    await _add(fx, group=Group("g", max_size=2))
    await _add(fx, group=Group("g", max_size=2), delay=60)
    extra = make_job(group=Group("g", max_size=2))
    await expect_raises(GroupFullError, lambda: fx.store.save_job(extra), "third job")
    expect_eq(await fx.store.get_job("q", extra.id), None, "the refused job")
    await claim(fx.store)
    await fx.store.save_job(extra)
    expect_eq(await _state(fx, extra), JobState.WAITING, "accepted once a job left")


@_check
async def check_group_rate_limit(fx: StoreFixture) -> None:
    """group_limiter allows max claims per group per duration."""
    a = [await _add(fx, group=Group("a")) for _ in range(3)]
    b = await _add(fx, group=Group("b"))
    limiter = Limiter(2, 10)
    ids = await claim_ids(fx.store, limit=10, group_limiter=limiter)
    expect_eq(ids, [a[0].id, b.id, a[1].id], "claims within the group limit")
    expect_eq(await claim(fx.store, limit=10, group_limiter=limiter), [], "group a is limited")
    await fx.advance(10)
    expect_eq(
        await claim_ids(fx.store, limit=10, group_limiter=limiter), [a[2].id], "window passed"
    )


@_check
async def check_global_concurrency(fx: StoreFixture) -> None:
    """max_global_concurrency caps the queue's active jobs across all claimers."""
    for _ in range(5):
        await _add(fx)
    expect_eq(len(await claim(fx.store, limit=2, worker="a")), 2, "first claimer")
    expect_eq(len(await claim(fx.store, limit=5, worker="b", max_global_concurrency=3)), 1,
              "second claimer")  # fmt: skip
    expect_eq(await claim(fx.store, limit=5, max_global_concurrency=3), [], "at the cap")
    expect_eq(await fx.store.get_active_count("q"), 3, "active count")


@_check
async def check_rate_limit(fx: StoreFixture) -> None:
    """limiter allows max claims in the queue per duration, across claimers."""
    for _ in range(5):
        await _add(fx)
    limiter = Limiter(2, 10)
    expect_eq(len(await claim(fx.store, limit=5, worker="a", limiter=limiter)), 2, "first window")
    expect_eq(await claim(fx.store, limit=5, worker="b", limiter=limiter), [], "limited")
    await fx.advance(9)
    expect_eq(await claim(fx.store, limit=5, limiter=limiter), [], "still limited")
    await fx.advance(1)
    expect_eq(len(await claim(fx.store, limit=5, limiter=limiter)), 2, "next window")


# -- flows -----------------------------------------------------------------------------------------


async def _flow(
    fx: StoreFixture, policy: str = "fail", children: int = 2
) -> tuple[JobData, list[JobData]]:
    parent = make_job("parents", "assemble")
    kids = [
        make_job("kids", "part", i, parent=parent, fail_parent_on_child_failure=policy)
        for i in range(children)
    ]
    saved = await fx.store.save_flow([parent, *kids])
    expect_eq([j.id for j in saved], [parent.id, *(k.id for k in kids)], "save_flow ids")
    expect_eq(saved[0].state, JobState.WAITING_CHILDREN, "save_flow returns the parent stored")
    return await _get(fx, parent), kids


@_check
async def check_flow_completion(fx: StoreFixture) -> None:
    """A parent waits for its children, collects their values and then waits to run."""
    parent, kids = await _flow(fx)
    expect_eq((parent.state, parent.pending_children), (JobState.WAITING_CHILDREN, 2), "parent")
    children = await fx.store.get_children_jobs("parents", parent.id)
    expect_eq([c.id for c in children], [k.id for k in kids], "children")
    expect_eq(await claim(fx.store, "parents"), [], "a waiting parent is not claimed")
    c1, c2 = await claim(fx.store, "kids", 2)
    await fx.store.finish_jobs([JobOutcome.completed(c1, "one")])
    expect_eq((await _get(fx, parent)).pending_children, 1, "pending after one child")
    await fx.store.finish_jobs([JobOutcome.completed(c2, "two")])
    parent = await _get(fx, parent)
    expect_eq(parent.state, JobState.WAITING, "parent after its children")
    expect_eq(parent.children_values, {f"kids:{c1.id}": "one", f"kids:{c2.id}": "two"},
              "children_values")  # fmt: skip
    orphan = make_job("kids", parent=make_job("parents"))
    await expect_raises(
        InvalidArgumentError, lambda: fx.store.save_flow([orphan]), "missing parent"
    )


@_check
async def check_flow_failure_policies(fx: StoreFixture) -> None:
    """A child's final failure fails, ignores or detaches from its parent, by its policy."""
    parent, _ = await _flow(fx, "fail")
    c1, _ = await claim(fx.store, "kids", 2)
    await fx.store.finish_jobs([JobOutcome.failed(c1, "broke")])
    parent = await _get(fx, parent)
    expect_eq(parent.state, JobState.FAILED, "policy fail")
    expect(parent.failed_reason and "broke" in parent.failed_reason, "reason names the child's")
    await fx.store.obliterate("kids", force=True)

    parent, _ = await _flow(fx, "ignore")
    c1, c2 = await claim(fx.store, "kids", 2)
    await fx.store.finish_jobs([JobOutcome.failed(c1, "x"), JobOutcome.completed(c2, 2)])
    parent = await _get(fx, parent)
    expect_eq(parent.state, JobState.WAITING, "policy ignore")
    expect_eq(len(await fx.store.get_children_jobs("parents", parent.id)), 2, "ignored stays")

    parent, _ = await _flow(fx, "remove")
    c1, c2 = await claim(fx.store, "kids", 2)
    await fx.store.finish_jobs([JobOutcome.failed(c1, "x"), JobOutcome.completed(c2, 2)])
    parent = await _get(fx, parent)
    expect_eq(parent.state, JobState.WAITING, "policy remove")
    expect_eq([c.id for c in await fx.store.get_children_jobs("parents", parent.id)], [c2.id],
              "removed child is detached")  # fmt: skip
    expect_eq((await _get(fx, c1)).parent_id, None, "detached child's parent_id")


@_check
async def check_flow_primitives(fx: StoreFixture) -> None:
    """notify_child_completed and fail_parent_on_child_failure move the parent."""
    parent, _ = await _flow(fx, children=2)
    expect_eq(await fx.store.notify_child_completed("parents", parent.id),
              JobState.WAITING_CHILDREN, "one child done")  # fmt: skip
    expect_eq(await fx.store.notify_child_completed("parents", parent.id), JobState.WAITING,
              "both done")  # fmt: skip
    expect(not await fx.store.fail_parent_on_child_failure("parents", parent.id, "x"),
           "a parent no longer waiting for children is not failed")  # fmt: skip
    other, _ = await _flow(fx, children=1)
    expect(await fx.store.fail_parent_on_child_failure("parents", other.id, "bad child"), "failed")
    expect_eq((await _get(fx, other)).state, JobState.FAILED, "state")
    expect_eq(await fx.store.notify_child_completed("parents", "ghost"), None, "unknown parent")


# -- cancel, remove, update ------------------------------------------------------------------------


@_check
async def check_cancel(fx: StoreFixture) -> None:
    """Cancel fails a job that is not running, and asks the worker of a running one to stop."""
    waiting = await _add(fx)
    running = await _add(fx)
    result = await fx.store.cancel_job("q", waiting.id)
    assert result is not None
    expect_eq((result.state, result.failed_reason), (JobState.FAILED, "cancelled"), "cancelled")
    expect(result.cancelled_at is not None, "cancelled_at")
    [job] = await claim(fx.store)
    expect_eq(job.id, running.id, "claimed")
    assert job.lock_token is not None
    active = await fx.store.cancel_job("q", job.id)
    assert active is not None
    expect_eq(active.state, JobState.ACTIVE, "an active job stays active")
    expect(active.cancelled_at is not None, "cancel requested")
    statuses = await fx.store.extend_locks("q", {job.id: job.lock_token}, 30)
    expect_eq(statuses, {job.id: LockStatus.CANCEL_REQUESTED}, "the worker learns of it")
    await fx.store.finish_jobs([JobOutcome.retry(job, "interrupted")])
    expect_eq(await _state(fx, job), JobState.FAILED, "a cancelled job is not retried")
    await expect_raises(InvalidJobStateError, lambda: fx.store.cancel_job("q", job.id), "twice")
    expect_eq(await fx.store.cancel_job("q", "ghost"), None, "unknown job")


@_check
async def check_remove_job(fx: StoreFixture) -> None:
    """remove_job removes a job and its children, refuses active ones."""
    job = await _add(fx)
    expect(await fx.store.remove_job("q", job.id), "removed")
    expect(not await fx.store.remove_job("q", job.id), "already gone")
    parent, kids = await _flow(fx)
    expect(await fx.store.remove_job("parents", parent.id), "parent removed")
    expect_eq(await fx.store.get_job("kids", kids[0].id), None, "children removed with it")
    await _add(fx)
    [active] = await claim(fx.store)
    await expect_raises(InvalidJobStateError, lambda: fx.store.remove_job("q", active.id), "active")


@_check
async def check_update_job(fx: StoreFixture) -> None:
    """update_job changes fields, honours expected_state, and reorders on a priority change."""
    a = await _add(fx, data=1)
    b = await _add(fx, data=2)
    expect(await fx.store.update_job("q", a.id, {"data": {"new": True}, "progress": 50}),
           "update")  # fmt: skip
    got = await _get(fx, a)
    expect_eq((got.data, got.progress), ({"new": True}, 50), "updated fields")
    expect(not await fx.store.update_job("q", a.id, {"data": 0}, expected_state=JobState.DELAYED),
           "expected_state guard")  # fmt: skip
    expect(not await fx.store.update_job("q", "ghost", {"data": 0}), "unknown job")
    opts = attrs.evolve(b.opts, priority=-5)
    await fx.store.update_job("q", b.id, {"opts": opts})
    expect_eq(await claim_ids(fx.store, limit=2), [b.id, a.id], "order after a priority change")
    await expect_raises(
        InvalidJobStateError, lambda: fx.store.update_job("q", b.id, {"state": JobState.WAITING}),
        "moving an active job",
    )  # fmt: skip
    c = await _add(fx)
    await expect_raises(
        InvalidArgumentError,
        lambda: fx.store.update_job("q", c.id, {"state": JobState.DELAYED}),
        "delayed without delay_until",
    )
    until = await fx.store.now() + timedelta(minutes=1)
    await fx.store.update_job("q", c.id, {"state": JobState.DELAYED, "delay_until": until})
    expect_eq(await fx.store.get_next_delayed_timestamp("q"), until, "moved to delayed")
    await fx.store.update_job("q", c.id, {"state": "waiting"}, expected_state=JobState.DELAYED)
    expect_eq(await claim_ids(fx.store), [c.id], "moved back to waiting")
    expect_eq(await fx.store.add_log("q", c.id, "line 1"), 1, "first log line")
    expect_eq(await fx.store.add_log("q", c.id, "line 2"), 2, "second log line")
    expect_eq((await _get(fx, c)).logs, ["line 1", "line 2"], "logs")
    await expect_raises(JobNotFoundError, lambda: fx.store.add_log("q", "ghost", "x"), "log")


# -- maintenance -----------------------------------------------------------------------------------


async def _finish_all(fx: StoreFixture, queue: str = "q", *, fail: bool = False) -> None:
    jobs = await claim(fx.store, queue, 1000)
    outcomes = [JobOutcome.failed(j, "x") if fail else JobOutcome.completed(j) for j in jobs]
    await fx.store.finish_jobs(outcomes)


@_check
async def check_clean(fx: StoreFixture) -> None:
    """clean removes finished jobs older than the grace period, oldest first, up to limit."""
    old = [await _add(fx) for _ in range(3)]
    await _finish_all(fx)
    await fx.advance(100)
    young = await _add(fx)
    await _finish_all(fx)
    expect_eq(await fx.store.clean("q", JobState.COMPLETED, 50, limit=2), 2, "limited clean")
    remaining = {j.id for j in await fx.store.list_jobs("q", JobState.COMPLETED)}
    expect_eq(remaining, {old[2].id, young.id}, "after limited clean")
    expect_eq(await fx.store.clean("q", JobState.COMPLETED, 50), 1, "clean the rest of the old")
    expect_eq(await fx.store.clean("q", JobState.FAILED, 0), 0, "nothing failed")
    waiting = await _add(fx)
    await fx.advance(10)
    expect_eq(await fx.store.clean("q", JobState.WAITING, 5), 1, "clean waiting by age")
    expect_eq(await fx.store.get_job("q", waiting.id), None, "cleaned waiting job")


@_check
async def check_drain(fx: StoreFixture) -> None:
    """drain removes waiting and delayed jobs and nothing else."""
    await _add(fx)
    await _add(fx, delay=60)
    await _add(fx)
    [active] = await claim(fx.store)
    done = await _add(fx, "other")
    expect_eq(await fx.store.drain("q"), 2, "drained")
    counts = await fx.store.get_job_counts("q")
    expect_eq((counts[JobState.WAITING], counts[JobState.DELAYED], counts[JobState.ACTIVE]),
              (0, 0, 1), "counts after drain")  # fmt: skip
    expect(await fx.store.get_job("other", done.id) is not None, "other queues untouched")
    del active


@_check
async def check_obliterate(fx: StoreFixture) -> None:
    """obliterate removes a queue whole; with active jobs only when forced."""
    await _add(fx)
    await _add(fx, dedup_key="k")
    await fx.store.pause_job_name("q", "x")
    await claim(fx.store)
    await _add(fx, "keep")
    await expect_raises(InvalidJobStateError, lambda: fx.store.obliterate("q"), "active jobs")
    await fx.store.obliterate("q", force=True)
    expect_eq(await fx.store.list_queues(), ["keep"], "queues")
    expect_eq(sum((await fx.store.get_job_counts("q")).values()), 0, "no jobs left")
    expect_eq(await fx.store.get_paused_job_names("q"), [], "no paused names left")
    expect_eq(await fx.store.find_by_deduplication_key("q", "k"), None, "no keys left")
    await fx.store.obliterate("never-existed")


@_check
async def check_retry_jobs(fx: StoreFixture) -> None:
    """retry_jobs moves failed (or completed) jobs back to waiting with their run cleared."""
    for _ in range(2):
        await _add(fx)
    await _finish_all(fx, fail=True)
    expect_eq(await fx.store.retry_jobs("q"), 2, "retried")
    for job in await fx.store.list_jobs("q", JobState.WAITING):
        expect_eq((job.attempts_made, job.failed_reason, job.failed_at), (0, None, None), "reset")
    await _finish_all(fx)
    expect_eq(await fx.store.retry_jobs("q", JobState.COMPLETED), 2, "completed retried")
    await expect_raises(InvalidArgumentError, lambda: fx.store.retry_jobs("q", JobState.WAITING),
                        "retry waiting", argument="state")  # fmt: skip


# -- queries ---------------------------------------------------------------------------------------


@_check
async def check_counts_and_lists(fx: StoreFixture) -> None:
    """Counts cover every state; lists follow each state's order and paginate inclusively."""
    waiting = [await _add(fx, priority=p) for p in (2, 1, 3)]
    delayed = [await _add(fx, delay=d) for d in (30, 10)]
    done = [await _add(fx, priority=-1) for _ in range(3)]
    for job in await claim(fx.store, limit=3):
        await fx.store.finish_jobs([JobOutcome.completed(job)])
        await fx.advance(1)
    [active] = await claim(fx.store)
    counts = await fx.store.get_job_counts("q")
    expect_eq(counts, {JobState.WAITING: 2, JobState.WAITING_CHILDREN: 0, JobState.DELAYED: 2,
                       JobState.ACTIVE: 1, JobState.COMPLETED: 3, JobState.FAILED: 0},
              "counts")  # fmt: skip
    for state, n in counts.items():
        expect_eq(await fx.store.count_jobs("q", state), n, f"count_jobs({state.value})")

    def ids(jobs: list[JobData]) -> list[str]:
        return [j.id for j in jobs]

    expect_eq(active.id, waiting[1].id, "claimed the lowest priority")
    expect_eq(ids(await fx.store.list_jobs("q", JobState.WAITING)), [waiting[0].id, waiting[2].id],
              "waiting order")  # fmt: skip
    expect_eq(ids(await fx.store.list_jobs("q", JobState.DELAYED)), [delayed[1].id, delayed[0].id],
              "delayed order")  # fmt: skip
    newest_first = [done[2].id, done[1].id, done[0].id]
    expect_eq(ids(await fx.store.list_jobs("q", JobState.COMPLETED)), newest_first, "completed")
    expect_eq(ids(await fx.store.list_jobs("q", JobState.COMPLETED, 1, 1)), newest_first[1:2],
              "page 1..1")  # fmt: skip
    expect_eq(ids(await fx.store.list_jobs("q", JobState.COMPLETED, 1, -1)), newest_first[1:],
              "page 1..end")  # fmt: skip
    expect_eq(ids(await fx.store.list_jobs("q", JobState.ACTIVE)), [active.id], "active")
    expect_eq(await fx.store.list_jobs("nothing", JobState.WAITING), [], "unknown queue")


@_check
async def check_list_queues(fx: StoreFixture) -> None:
    """list_queues names the queues holding jobs or paused names, sorted."""
    expect_eq(await fx.store.list_queues(), [], "no queues")
    await _add(fx, "b")
    await _add(fx, "a")
    await fx.store.pause_job_name("c", ALL_JOB_NAMES)
    expect_eq(await fx.store.list_queues(), ["a", "b", "c"], "queues")


@_check
async def check_odd_names(fx: StoreFixture) -> None:
    """Queue, job and group names with quotes, semicolons, unicode and 200 characters work."""
    queue = "q'; DROP TABLE jobs; --\"" + "é" * 20 + "x" * 175
    name = "ñame with 'quotes' and \"double\" and ; and 🚚"
    job = await _add(fx, queue, name, data={"k'": "v;"}, group=Group(queue))
    expect_eq((job.queue_name, job.name), (queue, name), "names")
    [claimed] = await claim(fx.store, queue)
    expect_eq(claimed.id, job.id, "claimed")
    expect_eq(await fx.store.list_queues(), [queue], "list_queues")


# -- events ----------------------------------------------------------------------------------------


@_check
async def check_events(fx: StoreFixture) -> None:
    """Each operation publishes its events; a job event is named after the state it entered."""
    rec = Recorder()
    everything = Recorder()
    fx.store.subscribe("q", rec)
    fx.store.subscribe(None, everything)
    a = await _add(fx)
    b = await _add(fx, delay=5)
    expect_eq(rec.types(), ["waiting", "delayed"], "add events")
    [job] = await claim(fx.store)
    expect_eq(rec.events[-1].type, "active", "claim event")
    expect_eq(rec.events[-1].data.get("prev"), "waiting", "prev state")
    await fx.store.update_job("q", a.id, {"progress": 40})
    expect_eq((rec.events[-1].type, rec.events[-1].data.get("progress")), ("progress", 40),
              "progress event")  # fmt: skip
    await fx.store.finish_jobs([JobOutcome.completed(job, "r")])
    last = rec.events[-1]
    expect_eq((last.type, last.job_id, last.data.get("returnvalue")), ("completed", a.id, "r"),
              "completed event")  # fmt: skip
    expect(last.timestamp is not None, "events carry a timestamp")
    await fx.advance(5)
    await fx.store.promote_delayed_jobs("q")
    [job] = await claim(fx.store)
    await fx.store.finish_jobs([JobOutcome.retry(job, "again", delay=1)])
    expect_eq((rec.events[-1].type, rec.events[-1].data.get("failed_reason")), ("delayed", "again"),
              "retry event")  # fmt: skip
    await fx.advance(1)
    await fx.store.promote_delayed_jobs("q")
    [job] = await claim(fx.store)
    await fx.store.finish_jobs([JobOutcome.failed(job, "dead")])
    expect_eq(rec.types(b.id), ["delayed", "waiting", "active", "delayed", "waiting", "active",
                                "failed"], "job b's events")  # fmt: skip
    rec.clear()
    await fx.store.pause_job_name("q", "x")
    await fx.store.resume_job_name("q", "x")
    await _add(fx, delay=10)
    await fx.store.drain("q")
    await fx.store.clean("q", JobState.COMPLETED, 0)
    await fx.store.remove_job("q", b.id)
    expect_eq(rec.types(), ["paused", "resumed", "delayed", "drained", "cleaned", "removed"],
              "queue events")  # fmt: skip
    expect_eq(rec.events[0].data.get("job_name"), "x", "paused job name")
    rec.clear()
    await _add(fx)
    [job] = await claim(fx.store, lock=1)
    await fx.store.cancel_job("q", job.id)
    await fx.advance(2)
    await fx.store.recover_stalled_jobs("q", 3)
    expect_eq(rec.types(job.id), ["waiting", "active", "cancel-requested", "stalled", "failed"],
              "cancel and stall events")  # fmt: skip
    await _add(fx, "elsewhere")
    expect_eq(everything.events[-1].queue_name, "elsewhere", "a catch-all subscriber")
    await fx.store.publish(StoreEvent("custom", "q", None, {"k": 1}))
    expect_eq((rec.events[-1].type, rec.events[-1].data), ("custom", {"k": 1}), "published")
    fx.store.unsubscribe("q", rec)
    before = len(rec.events)
    await _add(fx)
    expect_eq(len(rec.events), before, "no events after unsubscribe")


@_check
async def check_more_events(fx: StoreFixture) -> None:
    """Flows, releases, promotions, retries and obliteration publish their events."""
    rec = Recorder()
    fx.store.subscribe(None, rec)
    parent, kids = await _flow(fx, children=1)
    expect_eq(rec.types(parent.id), ["waiting-children"], "a flow parent")
    expect_eq(rec.types(kids[0].id), ["waiting"], "a flow child")
    [child] = await claim(fx.store, "kids")
    assert child.lock_token is not None
    await fx.store.release_lock("kids", child.id, child.lock_token)
    expect_eq(rec.types(child.id)[-1], "waiting", "release")
    [child] = await claim(fx.store, "kids")
    await fx.store.finish_jobs([JobOutcome.completed(child, 1)])
    expect_eq(rec.types(parent.id), ["waiting-children", "waiting"], "parent after its child")
    late = await _add(fx, delay=60)
    await fx.store.promote_jobs("q")
    expect_eq(rec.types(late.id), ["delayed", "waiting"], "promote_jobs")
    [job] = await claim(fx.store)
    await fx.store.finish_jobs([JobOutcome.failed(job, "x")])
    await fx.store.retry_jobs("q")
    expect_eq(rec.types(late.id)[-2:], ["failed", "waiting"], "retry_jobs")
    await fx.store.obliterate("q")
    expect_eq(rec.events[-1].type, "obliterated", "obliterate")
    fx.store.unsubscribe(None)
    await _add(fx)
    expect_eq(rec.events[-1].type, "obliterated", "unsubscribe(None) removes every callback")


@_check
async def check_metrics(fx: StoreFixture) -> None:
    """Final outcomes are counted per minute and in total, whatever ended the job."""
    from conveyor.store import MetricKind

    start = await fx.store.now()
    for _ in range(3):
        await _add(fx)
    await _finish_all(fx)
    await fx.advance(60)
    await _add(fx)
    await _finish_all(fx, fail=True)
    cancelled = await _add(fx)
    await fx.store.cancel_job("q", cancelled.id)
    await _add(fx, attempts=2)
    [job] = await claim(fx.store)
    await fx.store.finish_jobs([JobOutcome.retry(job, "again")])  # not final: not counted
    done = await fx.store.get_metrics("q", MetricKind.COMPLETED)
    expect_eq(done.total, 3, "completed total")
    expect_eq([b.count for b in done.buckets], [3], "completed per minute")
    expect(done.buckets[0].minute <= start < done.buckets[0].minute + timedelta(minutes=1),
           "a bucket starts at its minute")  # fmt: skip
    failed = await fx.store.get_metrics("q", MetricKind.FAILED)
    expect_eq((failed.total, [b.count for b in failed.buckets]), (2, [2]), "failed")
    later = await fx.store.get_metrics(
        "q", MetricKind.COMPLETED, start=start + timedelta(seconds=61)
    )
    expect_eq((later.total, later.buckets), (3, []), "a window after the completions")
    expect_eq((await fx.store.get_metrics("none", MetricKind.FAILED)).total, 0, "unknown queue")
    await expect_raises(InvalidArgumentError, lambda: fx.store.get_metrics("q", "slow"),  # type: ignore[arg-type]
                        "unknown metric", argument="kind")  # fmt: skip


@_check
async def check_raising_subscriber(fx: StoreFixture) -> None:
    """A subscriber that raises does not break the operation that published."""

    def broken(event: StoreEvent) -> None:
        raise RuntimeError("subscriber bug")

    fx.store.subscribe("q", broken)
    job = await _add(fx)
    expect_eq(job.state, JobState.WAITING, "saved despite the subscriber")
    expect_eq(len(await claim(fx.store)), 1, "claimed despite the subscriber")


@_check
async def check_backoff_and_repeat_options_roundtrip(fx: StoreFixture) -> None:
    """Every job option comes back from the store as it went in."""
    from conveyor.store import Repeat

    job = make_job(
        priority=7, attempts=4, backoff=Backoff.exponential("1s", jitter=0.5, max_delay="1m"),
        lifo=True, remove_on_complete=10, remove_on_fail=True, timeout="2m",
        repeat=Repeat(cron="*/5 * * * *", tz="Europe/Paris", limit=3),
        group=Group("g", max_size=100), fail_parent_on_child_failure="ignore",
    )  # fmt: skip
    await fx.store.save_job(job)
    expect_eq((await _get(fx, job)).opts, job.opts, "opts")
