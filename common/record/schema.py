"""A small validator and JSON Schema generator for the suite's declared record types (common/record/types.py).

The types are TypedDicts, so the code that builds and reads records keeps working with plain mappings, and the
declaration is the one place that says which fields a record has, their types and their ranges. Numbers are
finite unless declared otherwise (`AnyFloat`): JSON read by Python turns `NaN` into a float that compares false
against every bound, so a NaN that reached a verdict would pass it. Constraints ride on `Annotated`:

    Annotated[float, Bound(0, 1)]     a finite number in [0, 1]
    Annotated[int, Bound(1)]          an integer >= 1 (never a bool, never "100")

`problems(value, T)` lists what is wrong as "field: what" strings; `check(value, T, path, what)` raises
RecordError (exit 2) naming the file, the field and what is wrong. `json_schema(T)` writes the same
declaration as JSON Schema (docs/schemas/, kept current by tests/unit/test_record_types.py).
"""

from __future__ import annotations

import functools
import math
import typing
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union

from common.errors import InputError


@dataclass(frozen=True)
class Bound:
    """A number's constraints: inclusive bounds and whether NaN / Inf are allowed."""

    lo: float | None = None
    hi: float | None = None
    finite: bool = True


AnyFloat = Annotated[float, Bound(finite=False)]  # a number that may be NaN or Inf (compare statistics)


class RecordError(InputError):
    """A record, baseline or history row that does not match its declared type (exit 2)."""

    def __init__(self, message: str, path=None, field: str | None = None):
        self.field = field
        super().__init__(message, path)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _name(args[0])
    if tp is NoneType or tp is None:
        return "null"
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (Union, UnionType):
        return " or ".join(_name(a) for a in args)
    if origin is list:
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if _is_typed_dict(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _is_typed_dict(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


@functools.cache
def _hints(td) -> dict:
    # resolving the annotations is most of a check's time: once per type, not once per record or history row
    return typing.get_type_hints(td, include_extras=True)


def _join(where: str, key) -> str:
    return f"{where}[{key}]" if isinstance(key, int) else (f"{where}.{key}" if where else str(key))


def _number_problem(value, bound: Bound, integer: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        return f"expected {'an integer' if integer else 'a number'}, got {_short(value)}"
    if not math.isfinite(value):
        return None if not bound.finite else f"expected a finite number, got {value}"
    if bound.lo is not None and value < bound.lo:
        return f"{value!r} is below its minimum {bound.lo:g}"
    if bound.hi is not None and value > bound.hi:
        return f"{value!r} is above its maximum {bound.hi:g}"
    return None


def problems(value, tp, where: str = "") -> list[str]:
    """What is wrong with `value` as a `tp`: a list of "field: what" strings (empty: it is one)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    field = where or "(the whole record)"
    bound = Bound()
    if origin is Annotated:
        tp, bound = args[0], next((m for m in args[1:] if isinstance(m, Bound)), Bound())
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return []
    if tp is NoneType or tp is None:
        return [] if value is None else [f"{field}: expected null, got {_short(value)}"]
    if origin in (Union, UnionType):
        if value is None and NoneType in args:
            return []
        options = [a for a in args if a is not NoneType]
        found = [problems(value, a, where) for a in options]
        if any(not f for f in found):
            return []
        if len(options) == 1:
            return found[0]
        return [f"{field}: expected {_name(tp)}, got {_short(value)}"]
    if origin is Literal:
        return (
            []
            if value in args and type(value) in {type(a) for a in args}
            else [f"{field}: expected {_name(tp)}, got {_short(value)}"]
        )
    if tp in (int, float):
        why = _number_problem(value, bound, tp is int)
        return [f"{field}: {why}"] if why else []
    if tp in (str, bool):
        return [] if isinstance(value, tp) else [f"{field}: expected {_name(tp)}, got {_short(value)}"]
    if origin is list:
        if not isinstance(value, (list, tuple)):  # a tuple in memory is a JSON array on disk
            return [f"{field}: expected a list, got {_short(value)}"]
        return [p for i, item in enumerate(value) for p in problems(item, args[0], _join(where, i))]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return [f"{field}: expected a mapping, got {_short(value)}"]
        item_tp = args[1] if args else Any
        return [
            p
            for k, item in value.items()
            for p in ([f"{_join(where, k)}: keys must be strings"] if not isinstance(k, str) else [])
            + problems(item, item_tp, _join(where, k))
        ]
    if _is_typed_dict(tp):
        if not isinstance(value, dict):
            return [f"{field}: expected a mapping, got {_short(value)}"]
        out = [f"{_join(where, k)}: missing" for k in sorted(tp.__required_keys__) if k not in value]
        for k, k_tp in _hints(tp).items():
            if k in value:
                out += problems(value[k], k_tp, _join(where, k))
        return out
    raise TypeError(f"schema: unsupported type {tp!r}")  # a declaration error in types.py, not bad data


def check(value, tp, path=None, what: str = "record"):
    """`value` unchanged when it is a `tp`, else RecordError naming `path`, the first wrong field and why."""
    found = problems(value, tp)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise RecordError(f"invalid {what}: {found[0]}{more}", path, field=found[0].split(":", 1)[0])
    return value


def json_schema(tp, title: str | None = None) -> dict:
    """The JSON Schema (draft 2020-12) of a declared type; TypedDicts become $defs by class name."""
    defs: dict = {}
    root = _schema_of(tp, defs)
    out: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    if title:
        out["title"] = title
    out.update(root)
    if defs:
        out["$defs"] = dict(sorted(defs.items()))
    return out


def _schema_of(tp, defs: dict) -> dict:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bound = Bound()
    if origin is Annotated:
        tp, bound = args[0], next((m for m in args[1:] if isinstance(m, Bound)), Bound())
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return {}
    if tp is NoneType or tp is None:
        return {"type": "null"}
    if origin in (Union, UnionType):
        return {"anyOf": [_schema_of(a, defs) for a in args]}
    if origin is Literal:
        return {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
    if tp in (int, float):
        out: dict[str, Any] = {"type": "integer" if tp is int else "number"}
        if bound.lo is not None:
            out["minimum"] = bound.lo
        if bound.hi is not None:
            out["maximum"] = bound.hi
        return out
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if origin is list:
        return {"type": "array", "items": _schema_of(args[0], defs)}
    if origin is dict or tp is dict:
        return {"type": "object", "additionalProperties": _schema_of(args[1], defs) if args else {}}
    if _is_typed_dict(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placed first: a type that refers to itself stops here
            body: dict = {"type": "object"}
            if tp.__doc__:
                body["description"] = " ".join(tp.__doc__.split())
            body["properties"] = {k: _schema_of(v, defs) for k, v in _hints(tp).items()}
            body["required"] = sorted(tp.__required_keys__)
            defs[name] = body
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"schema: unsupported type {tp!r}")
