"""The one converter that defines conveyor's serialized job schema.

Stores persist exactly what :func:`unstructure` returns (JSON text for SQL stores), and read it
back with :func:`structure`. The wire form:

* datetimes: ISO 8601 strings in UTC with an explicit offset,
  ``"2026-11-24T19:04:00.123456+00:00"``;
  reading accepts any offset and converts to UTC, and refuses naive timestamps;
* durations: float seconds;
* enums (``JobState``, ``BackoffType``, ...): their string value;
* attrs models: JSON objects keyed by attribute name; attributes equal to their default are
  left out, and a missing attribute reads as its default (so adding an optional field with a
  default is not a breaking change);
* an attribute the schema does not know is an error (:class:`SerializationError`), so a record
  written by a newer conveyor is never half-read and written back without its new fields;
* primitives are checked strictly: ``"5"`` is not an ``int``, ``1`` is not a ``bool``.

Every failure reads as a :class:`SerializationError` whose ``argument`` is the path of the bad
value, e.g. ``$.opts.attempts``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Set
from datetime import datetime
from typing import Any, TypeVar, cast

import attrs
import cattrs
from cattrs.v import format_exception

from ._durations import to_utc
from ._errors import ConveyorError, SerializationError
from ._json import copy_json
from ._models import AttemptRecord, JobData, JobOptions, JobState, RepeatRun

__all__ = [
    "configure_converter",
    "converter",
    "from_json",
    "make_converter",
    "structure",
    "to_json",
    "unstructure",
]

T = TypeVar("T")


def _strict(kind: type, *, exclude_bool: bool = True, also: tuple[type, ...] = ()) -> Any:
    accepted = (kind, *also)

    def hook(value: Any, _type: Any) -> Any:
        if (exclude_bool and isinstance(value, bool)) or not isinstance(value, accepted):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r:.60}")
        return float(cast("float", value)) if kind is float else value

    return hook


def _structure_bool(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected bool, got {type(value).__name__} {value!r:.60}")
    return value


def _structure_bool_or_int(value: Any, _type: Any) -> bool | int:
    if not isinstance(value, bool | int):
        raise TypeError(f"expected bool or int, got {type(value).__name__} {value!r:.60}")
    return value


def _structure_enum(value: Any, type_: Any) -> Any:
    if isinstance(value, type_):
        return value
    try:
        return type_(value)
    except ValueError:
        known = ", ".join(repr(m.value) for m in type_)
        raise ValueError(f"unknown {type_.__name__} {value!r:.60} (known: {known})") from None


def _structure_datetime(value: Any, _type: Any) -> datetime:
    if isinstance(value, datetime):
        return to_utc(value, "timestamp")
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 string, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    return to_utc(parsed, "timestamp")


def configure_converter(conv: cattrs.Converter) -> None:
    """Install conveyor's hooks on ``conv`` (see the module docstring for the wire form)."""
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, enum.Enum), lambda e: e.value
    )
    conv.register_unstructure_hook(datetime, lambda dt: to_utc(dt, "timestamp").isoformat())
    conv.register_structure_hook(datetime, _structure_datetime)
    conv.register_structure_hook(int, _strict(int))
    conv.register_structure_hook(float, _strict(float, also=(int,)))
    conv.register_structure_hook(str, _strict(str, exclude_bool=False))
    conv.register_structure_hook(bool, _structure_bool)
    # StrEnum precedes str in a StrEnum's MRO, so this hook, not the str one, reads enums.
    conv.register_structure_hook(enum.StrEnum, _structure_enum)
    conv.register_structure_hook(enum.Enum, _structure_enum)
    conv.register_structure_hook(bool | int, _structure_bool_or_int)


_last_iso: tuple[datetime | None, str] = (None, "")


def _iso(value: datetime) -> str:
    global _last_iso
    last, text = _last_iso
    if value is last:  # the jobs of a bulk add share one created_at
        return text
    text = to_utc(value, "timestamp").isoformat()
    _last_iso = (value, text)
    return text


def _job_unstructure_fn(conv: cattrs.Converter, *, copy: bool = True) -> Any:
    """``JobData``'s unstructure hook as straight-line code, giving what cattrs would.

    Stores serialize a record on every write. cattrs' generated hook builds each factory
    default (``JobOptions()`` among them) anew to compare with, which is most of its cost;
    this one compares with defaults built once. tests/test_models.py checks the two agree.
    With ``copy=False`` the JSON values (data, return value...) are shared, not copied: for
    :func:`to_json`, which only encodes the result.
    """
    nested: dict[str, Any] = {
        "opts": JobOptions,
        "attempt_logs": list[AttemptRecord],
        "repeat_run": RepeatRun,
    }
    defaults: dict[str, Any] = {}
    lines = ["def unstructure_job(job):", "    out = {}"]
    for field in attrs.fields(JobData):
        name = field.name
        kind = field.type if isinstance(field.type, str) else repr(field.type)
        if "datetime" in kind:
            value = "iso(v)"
        elif name in ("data", "progress", "returnvalue", "children_values"):
            value = "copy_json(v)" if copy else "v"
        elif name in ("stacktrace", "logs"):
            value = "list(v)" if copy else "v"
        elif name == "state":
            value = "v.value"
        elif name in nested:
            value = f"unstructure(v, {name}_type)"
            defaults[f"{name}_type"] = nested[name]
        else:
            value = "v"
        lines.append(f"    v = job.{name}")
        if field.default is attrs.NOTHING:
            lines.append(f"    out[{name!r}] = {value}")
            continue
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()  # type: ignore[union-attr]
        defaults[f"default_{name}"] = default
        # (identity first: options are often the one shared default instance)
        same = f"v is not default_{name} and " if name == "opts" else ""
        lines.append(f"    if {same}v != default_{name}:")
        lines.append(f"        out[{name!r}] = {value}")
    lines.append("    return out")
    namespace: dict[str, Any] = {
        "iso": _iso,
        "copy_json": copy_json,
        "unstructure": conv.unstructure,
        **defaults,
    }
    exec("\n".join(lines), namespace)
    return namespace["unstructure_job"]


class _Unusual(Exception):
    """The fast JobData reader met something it leaves to cattrs."""


def _job_structure_fn(conv: cattrs.Converter) -> Any:
    """``JobData``'s structure hook: a fast path for what stores write, cattrs for the rest.

    Reading a record happens on every claim and read. The fast path checks each field's type
    the way the strict hooks do and builds the record directly; options equal to the defaults
    share one ``JobOptions`` (it is frozen). Anything it does not expect (an unknown key, a
    wrong type, a bad value) goes to cattrs' generated hook, which reads it or raises the
    precise error. tests/test_models.py checks the two agree.
    """
    fallback = conv.get_structure_hook(JobData)
    fields = attrs.fields(JobData)
    known = frozenset(f.name for f in fields)
    default_options = JobOptions()
    nested: dict[str, Any] = {
        "opts": JobOptions,
        "attempt_logs": list[AttemptRecord],
        "repeat_run": RepeatRun,
    }
    lines = [
        "def read(d):",
        "    if not d.keys() <= known: raise Unusual",
        "    job = new(JobData)",
    ]
    namespace: dict[str, Any] = {
        "known": known,
        "new": object.__new__,
        "JobData": JobData,
        "JobState": JobState,
        "Unusual": _Unusual,
        "default_options": default_options,
        "dt": _structure_datetime,
        "structure": conv.structure,
        "checked_strs": _checked_strs,
    }
    for field in fields:
        name = field.name
        kind = field.type if isinstance(field.type, str) else repr(field.type)
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            factory = getattr(default.factory, "__name__", "")  # type: ignore[union-attr]
            fresh = {"list": "[]", "dict": "{}"}.get(factory)
        else:
            fresh = None
        if default is attrs.NOTHING:
            lines.append(f"    v = d[{name!r}]")
        elif fresh is not None:
            lines.append(f"    v = d.get({name!r}, {fresh})")
        elif name == "opts":
            lines.append("    v = d.get('opts')")
        else:
            namespace[f"default_{name}"] = default
            lines.append(f"    v = d.get({name!r}, default_{name})")
        optional = "None" in kind
        if name == "opts":
            check = "    v = default_options if v is None or v == {} else structure(v, opts_type)"
            namespace["opts_type"] = JobOptions
        elif name in nested:
            namespace[f"{name}_type"] = nested[name]
            guard = "v is not None and " if optional else "v and "
            check = f"    if {guard}True: v = structure(v, {name}_type)"
        elif "datetime" in kind:
            check = "    if v is not None: v = dt(v, None)"
        elif name == "state":
            check = "    v = JobState(v)"
        elif name in ("stacktrace", "logs"):
            check = "    checked_strs(v)"
        elif name == "children_values":
            check = "    if type(v) is not dict: raise Unusual"
        elif name in ("data", "progress", "returnvalue"):
            check = ""
        else:
            base = {"str": "str", "int": "int", "bool": "bool"}[
                kind.replace(" | None", "").replace("<class '", "").replace("'>", "")
            ]
            none_ok = "v is not None and " if optional else ""
            check = f"    if {none_ok}type(v) is not {base}: raise Unusual"
        if check:
            lines.append(check)
        lines.append(f"    job.{name} = v")
    lines.append("    return job")
    exec("\n".join(lines), namespace)
    read = namespace["read"]

    def structure_job(value: Any, _type: Any) -> JobData:
        if type(value) is dict:
            try:
                return read(value)  # type: ignore[no-any-return]
            except (_Unusual, KeyError, TypeError, ValueError, ConveyorError, AttributeError):
                pass
            except cattrs.BaseValidationError:
                pass
        return fallback(value, _type)  # type: ignore[no-any-return]

    return structure_job


def _checked_strs(value: Any) -> None:
    if type(value) is not list:
        raise _Unusual
    for item in value:
        if type(item) is not str:
            raise _Unusual


def make_converter(*, fast_jobs: bool = True) -> cattrs.Converter:
    """A new converter with conveyor's wire form.

    ``fast_jobs=False`` leaves ``JobData`` to cattrs' own generated hook (for tests that check
    the hand-made one against it).
    """
    conv = cattrs.Converter(
        omit_if_default=True,
        forbid_extra_keys=True,
        unstruct_collection_overrides={Set: sorted},
    )
    configure_converter(conv)
    if fast_jobs:
        conv.register_unstructure_hook(JobData, _job_unstructure_fn(conv))
        conv.register_structure_hook(JobData, _job_structure_fn(conv))
    return conv


converter = make_converter()
"""The converter every store uses. Do not register hooks on it; make your own instead."""


def unstructure(obj: object) -> Any:
    """The serialized (JSON-ready) form of a model."""
    return converter.unstructure(obj)


def structure(data: Any, cls: type[T]) -> T:
    """Read a model from its serialized form; raise :class:`SerializationError` with the path."""
    try:
        return converter.structure(data, cls)
    except ConveyorError as exc:
        raise SerializationError("$", str(exc)) from exc
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, cattrs.BaseValidationError):
            messages = cattrs.transform_error(exc, path="$", format_exception=_describe)
            first = messages[0] if messages else str(exc)
            where, _, what = first.rpartition(" @ ")
            raise SerializationError(what or "$", where or first) from exc
        raise SerializationError("$", f"cannot read {cls.__name__}: {exc}") from exc


def _describe(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, ConveyorError | TypeError | ValueError):
        return str(exc)
    return format_exception(exc, type_)


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


_encode_job = _job_unstructure_fn(converter, copy=False)


def to_json(obj: object) -> str:
    """A model as compact JSON text."""
    if type(obj) is JobData:
        return _ENCODER.encode(_encode_job(obj))
    return _ENCODER.encode(unstructure(obj))


def from_json(text: str | bytes, cls: type[T]) -> T:
    """Read a model from JSON text written by :func:`to_json`."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SerializationError("$", f"not JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise SerializationError("$", f"expected a JSON object, got {type(data).__name__}")
    return structure(data, cls)
