"""The job schema: every model round-trips through the one converter, the wire form is pinned
by a golden file, and bad values fail at construction with an error naming the argument."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor import (
    ArgumentTypeError,
    AttemptRecord,
    Backoff,
    ConveyorError,
    Deduplication,
    FetchOptions,
    Group,
    InvalidArgumentError,
    JobData,
    JobOptions,
    JobOutcome,
    JobState,
    Limiter,
    Repeat,
    RepeatRun,
    SerializationError,
    StoreEvent,
)
from conveyor.store import check_json, from_json, parse_duration, structure, to_json, unstructure
from conveyor.store._models import OutcomeKind
from conveyor.store._serializer import make_converter

GOLDEN = Path(__file__).parent / "golden" / "job_record.json"

names = st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), min_size=1, max_size=30)
durations = st.floats(0, 1e7, allow_nan=False, allow_infinity=False)
positive = st.floats(0.001, 1e7, allow_nan=False, allow_infinity=False)
stamps = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip

backoffs = st.one_of(
    st.builds(Backoff.fixed, durations, jitter=st.floats(0, 1)),
    st.builds(
        Backoff.exponential, durations, jitter=st.floats(0, 1), max_delay=st.none() | positive
    ),
    st.builds(Backoff.custom, st.sampled_from(["pkg.mod:fn", "a:b.c"]), jitter=st.floats(0, 1)),
)
repeats = st.one_of(
    st.builds(
        Repeat,
        cron=st.sampled_from(["*/5 * * * *", "0 9 * * 1-5", "0 0 1 * *", "*/10 * * * * *"]),
        tz=st.sampled_from([None, "UTC", "Europe/Paris", "America/New_York"]),
        limit=st.none() | st.integers(1, 1000),
    ),
    st.builds(Repeat, every=positive, start=st.none() | stamps),
)
dedups = st.builds(Deduplication, st.none() | names, st.none() | positive, st.booleans())


def _options(
    repeat: st.SearchStrategy[Any], dedup: st.SearchStrategy[Any]
) -> st.SearchStrategy[JobOptions]:
    return st.builds(
        JobOptions,
        priority=st.integers(-(2**31), 2**31 - 1),
        delay=durations,
        attempts=st.integers(1, 100),
        backoff=st.none() | backoffs,
        lifo=st.booleans(),
        job_id=st.none() | names,
        deduplication=dedup,
        remove_on_complete=st.booleans() | st.integers(0, 1000),
        remove_on_fail=st.booleans() | st.integers(0, 1000),
        timeout=st.none() | positive,
        repeat=repeat,
        group=st.none() | st.builds(Group, names, st.none() | st.integers(1, 100)),
        fail_parent_on_child_failure=st.sampled_from(["fail", "ignore", "remove"]),
    )


options = _options(st.none() | repeats, st.none()) | _options(st.none(), st.none() | dedups)
attempt_records = st.builds(
    AttemptRecord, st.integers(0, 50), st.none() | names, st.none() | stamps, stamps,
    st.sampled_from(["completed", "failed", "stalled"]), st.none() | st.text(),
)  # fmt: skip
jobs = st.builds(
    JobData,
    id=names, queue_name=names, name=names, data=json_values, opts=options,
    state=st.sampled_from(JobState), progress=json_values, returnvalue=json_values,
    failed_reason=st.none() | st.text(), stacktrace=st.lists(st.text(), max_size=3),
    attempts_made=st.integers(0, 100), stalled_count=st.integers(0, 5),
    created_at=st.none() | stamps, processed_at=st.none() | stamps,
    completed_at=st.none() | stamps, failed_at=st.none() | stamps,
    cancelled_at=st.none() | stamps, delay_until=st.none() | stamps,
    lock_until=st.none() | stamps, locked_by=st.none() | names, lock_token=st.none() | names,
    logs=st.lists(st.text(), max_size=3), attempt_logs=st.lists(attempt_records, max_size=3),
    discarded=st.booleans(), parent_id=st.none() | names, parent_queue_name=st.none() | names,
    pending_children=st.integers(0, 10),
    children_values=st.dictionaries(st.text(), json_values, max_size=3),
    deduplication_key=st.none() | names, deduplication_until=st.none() | stamps,
    repeat_run=st.none() | st.builds(RepeatRun, names, st.integers(1, 10**6), stamps),
)  # fmt: skip
limiters = st.builds(Limiter, st.integers(1, 10_000), positive)
fetch_options = st.builds(
    FetchOptions,
    lifo=st.booleans(), job_name=st.none() | names,
    group_concurrency=st.none() | st.integers(1, 100), group_limiter=st.none() | limiters,
    exclude_groups=st.frozensets(names, max_size=3),
    max_global_concurrency=st.none() | st.integers(1, 100), limiter=st.none() | limiters,
)  # fmt: skip
events = st.builds(
    StoreEvent, names, names, st.none() | names,
    st.dictionaries(st.text(), json_values, max_size=3), st.none() | stamps,
)  # fmt: skip
outcomes = st.builds(
    JobOutcome, st.sampled_from(OutcomeKind), names, names, names, json_values,
    st.none() | st.text(), st.none() | st.text(), durations, st.booleans(),
)  # fmt: skip

ALL_MODELS = st.one_of(
    jobs, options, backoffs, repeats, attempt_records, limiters, fetch_options, events, outcomes
)


@given(ALL_MODELS)
def test_every_model_round_trips(model: Any) -> None:
    assert structure(unstructure(model), type(model)) == model
    assert from_json(to_json(model), type(model)) == model


@given(jobs)
def test_serialized_job_is_plain_json(job: JobData) -> None:
    wire = unstructure(job)
    assert json.loads(json.dumps(wire)) == wire


def test_golden_job_record() -> None:
    """The wire form of a job record; a change here is a schema change and needs a migration."""
    at = datetime(2026, 11, 24, 19, 4, 0, 123456, tzinfo=UTC)
    job = JobData(
        id="j1", queue_name="emails", name="send", data={"to": "a@example.com"},
        opts=JobOptions(priority=2, attempts=3, backoff=Backoff.exponential("1s"),
                        group=Group("tenant-1"), remove_on_complete=100),
        state=JobState.COMPLETED, returnvalue="ok", attempts_made=1, created_at=at,
        processed_at=at, completed_at=at + timedelta(seconds=1),
        attempt_logs=[AttemptRecord(1, "w1", at, at + timedelta(seconds=1), "completed")],
    )  # fmt: skip
    text = json.dumps(unstructure(job), indent=2, sort_keys=True) + "\n"
    if os.environ.get("CONVEYOR_UPDATE_GOLDEN") == "1":  # after a reviewed schema change
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    assert from_json(GOLDEN.read_text(), JobData) == job


def test_unknown_field_is_refused_with_its_path() -> None:
    record = unstructure(JobData(id="1", queue_name="q", name="n"))
    record["opts"] = {"priority": 1, "colour": "red"}
    with pytest.raises(SerializationError) as info:
        structure(record, JobData)
    assert info.value.argument == "$.opts"
    assert "colour" in str(info.value)


def test_missing_optional_fields_take_their_defaults() -> None:
    job = structure({"id": "1", "queue_name": "q", "name": "n"}, JobData)
    assert job == JobData(id="1", queue_name="q", name="n")
    assert job.state is JobState.WAITING
    assert job.opts == JobOptions()


@pytest.mark.parametrize(
    ("record", "path"),
    [
        ({"queue_name": "q", "name": "n"}, "$.id"),
        ({"id": "1", "queue_name": "q", "name": "n", "state": "sleeping"}, "$.state"),
        ({"id": "1", "queue_name": "q", "name": "n", "attempts_made": "2"}, "$.attempts_made"),
        ({"id": "1", "queue_name": "q", "name": "n", "discarded": 1}, "$.discarded"),
        ({"id": "1", "queue_name": "q", "name": "n", "created_at": "2020-01-01T00:00:00"},
         "$.created_at"),
        ({"id": "1", "queue_name": "q", "name": "n", "opts": {"attempts": 0}}, "$.opts"),
    ],
)  # fmt: skip
def test_bad_records_name_the_bad_path(record: dict[str, Any], path: str) -> None:
    with pytest.raises(SerializationError) as info:
        structure(record, JobData)
    assert info.value.argument == path


def test_not_json_at_all() -> None:
    with pytest.raises(SerializationError):
        from_json("{not json", JobData)
    with pytest.raises(SerializationError):
        from_json("[1, 2]", JobData)


def test_datetimes_are_utc_iso8601_and_offsets_convert() -> None:
    paris = timezone(timedelta(hours=1))
    job = JobData(
        id="1", queue_name="q", name="n", created_at=datetime(2026, 1, 1, 12, tzinfo=paris)
    )
    wire = unstructure(job)
    assert wire["created_at"] == "2026-01-01T11:00:00+00:00"
    assert "state" not in wire  # equal to its default, so left out
    assert (
        unstructure(JobData(id="1", queue_name="q", name="n", state=JobState.DELAYED))["state"]
        == "delayed"
    )


# -- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0), (2.5, 2.5), (timedelta(minutes=2), 120.0), ("5s", 5.0), ("250ms", 0.25),
        ("2 minutes", 120.0), ("1h30m", 5400.0), ("in 10 minutes", 600.0),
        ("1 hour, 30 minutes", 5400.0),
        ("1:30", 90.0), ("2 days", 172800.0),
    ],
)  # fmt: skip
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value, "delay") == seconds


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("soon", InvalidArgumentError), ("", InvalidArgumentError), (-1, InvalidArgumentError),
        ("-5s", InvalidArgumentError), (float("inf"), InvalidArgumentError),
        (True, ArgumentTypeError),
        ([5], ArgumentTypeError), (None, ArgumentTypeError),
    ],
)  # fmt: skip
def test_bad_durations_name_the_argument(value: Any, error: type[ConveyorError]) -> None:
    with pytest.raises(error) as info:
        parse_duration(value, "delay")
    assert getattr(info.value, "argument", None) == "delay"
    assert str(info.value).startswith("delay:")


# -- construction-time validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "argument"),
    [
        (lambda: JobOptions(priority="1"),  # type: ignore[arg-type]
         ArgumentTypeError, "priority"),
        (lambda: JobOptions(priority=2**40), InvalidArgumentError, "priority"),
        (lambda: JobOptions(attempts=0), InvalidArgumentError, "attempts"),
        (lambda: JobOptions(attempts=True), ArgumentTypeError, "attempts"),
        (lambda: JobOptions(delay=-1), InvalidArgumentError, "delay"),
        (lambda: JobOptions(delay="whenever"), InvalidArgumentError, "delay"),
        (lambda: JobOptions(timeout=0), InvalidArgumentError, "timeout"),
        (lambda: JobOptions(lifo="yes"),  # type: ignore[arg-type]
         ArgumentTypeError, "lifo"),
        (lambda: JobOptions(job_id=""), InvalidArgumentError, "job_id"),
        (lambda: JobOptions(remove_on_complete=-1), InvalidArgumentError, "remove_on_complete"),
        (lambda: JobOptions(remove_on_fail="all"),  # type: ignore[arg-type]
         ArgumentTypeError, "remove_on_fail"),
        (lambda: JobOptions(backoff="exponential"),  # type: ignore[arg-type]
         ArgumentTypeError, "backoff"),
        (lambda: JobOptions(fail_parent_on_child_failure="explode"), InvalidArgumentError,
         "fail_parent_on_child_failure"),
        (lambda: JobOptions(repeat=Repeat(every=5), deduplication=Deduplication("k")),
         InvalidArgumentError, "deduplication"),
        (lambda: JobOptions(colour="red"),  # type: ignore[call-arg]
         TypeError, None),
        (lambda: Backoff.fixed(-1), InvalidArgumentError, "backoff.delay"),
        (lambda: Backoff.exponential(1, jitter=2), InvalidArgumentError, "jitter"),
        (lambda: Backoff.custom("not a path"), InvalidArgumentError, "backoff.strategy"),
        (lambda: Backoff.custom(lambda n: n), InvalidArgumentError, "backoff.strategy"),
        (lambda: Repeat(), InvalidArgumentError, "repeat"),
        (lambda: Repeat(cron="* * * * *", every=5), InvalidArgumentError, "repeat"),
        (lambda: Repeat(cron="every tuesday"), InvalidArgumentError, "repeat.cron"),
        (lambda: Repeat(every=0), InvalidArgumentError, "repeat.every"),
        (lambda: Repeat(every=5, tz="Mars/Olympus"), InvalidArgumentError, "repeat.tz"),
        (lambda: Repeat(every=5, start=datetime(2026, 1, 1)), InvalidArgumentError, "repeat.start"),
        (lambda: Repeat(every=5, limit=0), InvalidArgumentError, "limit"),
        (lambda: Repeat(every=5, start=datetime(2026, 2, 1, tzinfo=UTC),
                        end=datetime(2026, 1, 1, tzinfo=UTC)), InvalidArgumentError, "repeat.end"),
        (lambda: Group(""), InvalidArgumentError, "id"),
        (lambda: Group("g", max_size=0), InvalidArgumentError, "max_size"),
        (lambda: Group("a\x00b"), InvalidArgumentError, "id"),
        (lambda: Limiter(0, 1), InvalidArgumentError, "max"),
        (lambda: Limiter(1, 0), InvalidArgumentError, "limiter.duration"),
        (lambda: Deduplication(ttl=-5), InvalidArgumentError, "deduplication.ttl"),
        (lambda: FetchOptions(group_concurrency=0), InvalidArgumentError, "group_concurrency"),
        (lambda: JobState.parse("sleeping"), InvalidArgumentError, "state"),
        (lambda: JobState.parse(3), ArgumentTypeError, "state"),
    ],
)  # fmt: skip
def test_bad_values_fail_at_construction(
    build: Any, error: type[Exception], argument: str | None
) -> None:
    with pytest.raises(error) as info:
        build()
    if argument is not None:
        assert isinstance(info.value, ConveyorError)
        assert getattr(info.value, "argument", None) == argument


def test_backoff_delays() -> None:
    assert [Backoff.fixed(3).delay_for(n) for n in (1, 2, 5)] == [3, 3, 3]
    assert [Backoff.exponential(1).delay_for(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert Backoff.exponential(1, max_delay=5).delay_for(10) == 5
    jittered = [Backoff.fixed(10, jitter=0.5).delay_for(1) for _ in range(50)]
    assert all(5 <= d <= 10 for d in jittered)
    with pytest.raises(InvalidArgumentError):
        Backoff.custom("a:b").delay_for(1)
    assert Backoff.custom(test_backoff_delays).strategy == "tests.test_models:test_backoff_delays"


@given(json_values)
def test_check_json_copies_json_values(value: Any) -> None:
    copied = check_json(value, "data")
    assert copied == value
    assert json.loads(json.dumps(copied)) == copied


@pytest.mark.parametrize(
    ("value", "path"),
    [({"a": {1, 2}}, "data.a"), ({"a": [1, float("nan")]}, "data.a[1]"), ({"a": {2: 1}}, "data.a"),
     (b"bytes", "data"), ({"when": datetime.now(UTC)}, "data.when")],
)  # fmt: skip
def test_check_json_names_the_bad_path(value: Any, path: str) -> None:
    with pytest.raises(SerializationError) as info:
        check_json(value, "data")
    assert info.value.argument == path


def test_tuples_become_lists() -> None:
    assert check_json({"a": (1, (2, 3))}, "data") == {"a": [1, [2, 3]]}


@given(jobs)
def test_copy_is_equal_and_shares_nothing_mutable(job: JobData) -> None:
    copied = job.copy()
    assert copied == job
    assert type(copied) is JobData
    for name in ("data", "progress", "returnvalue", "children_values", "stacktrace", "logs"):
        value = getattr(job, name)
        if isinstance(value, list | dict):
            assert getattr(copied, name) is not value, name
    copied.logs.append("only in the copy")
    assert "only in the copy" not in job.logs


_CATTRS_OWN = make_converter(fast_jobs=False)


@given(jobs)
def test_hand_made_job_hook_matches_cattrs(job: JobData) -> None:
    """The converter's straight-line JobData hook writes exactly what cattrs' own would."""
    assert unstructure(job) == _CATTRS_OWN.unstructure(job)
    assert list(unstructure(job)) == list(_CATTRS_OWN.unstructure(job))  # same key order
    # to_json shares the JSON values instead of copying them, and writes the same text
    assert to_json(job) == json.dumps(
        _CATTRS_OWN.unstructure(job), separators=(",", ":"), allow_nan=False
    )


@given(jobs)
def test_hand_made_job_reader_matches_cattrs(job: JobData) -> None:
    """The converter's fast JobData reader reads exactly what cattrs' own hook reads."""
    record = unstructure(job)
    assert structure(record, JobData) == _CATTRS_OWN.structure(record, JobData) == job


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"attempts_made": True}, "$.attempts_made"),
        ({"state": "sleeping"}, "$.state"),
        ({"logs": ["a", 1]}, "$.logs[1]"),
        ({"opts": {"priority": "high"}}, "$.opts.priority"),
        ({"created_at": "yesterday"}, "$.created_at"),
        ({"surprise": 1}, "$"),
    ],
)
def test_fast_reader_leaves_bad_records_to_the_precise_errors(
    change: dict[str, Any], path: str
) -> None:
    record = {"id": "a", "queue_name": "q", "name": "n", **change}
    with pytest.raises(SerializationError) as info:
        structure(record, JobData)
    assert info.value.argument.startswith(path)
