"""Turn the API dataclasses into OpenAPI v3 structural schemas, and objects to/from JSON.

The Python types are the single source of truth: the CRDs under ``crds/`` are generated from
them (``python -m cdi.api.crds``), so a field added here reaches the apiserver's validation and
the controller's code together. Each field carries its JSON name and schema extras in its
dataclass metadata, set with :func:`prop`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NewType, TypeVar, Union, get_args, get_origin

Quantity = NewType("Quantity", str)
"""A Kubernetes resource quantity (``10Gi``, ``500m``); the apiserver also accepts integers."""

Time = NewType("Time", str)
"""An RFC 3339 timestamp, as ``metav1.Time`` serialises."""

Duration = NewType("Duration", str)
"""A Go duration string (``48h``), as ``metav1.Duration`` serialises."""

RawObject = NewType("RawObject", dict)  # type: ignore[type-arg]
"""An object kept verbatim (``x-kubernetes-preserve-unknown-fields``): used only where CDI's own
CRD carries a huge core type (affinity) whose schema would add nothing for our controller."""

Schema = dict[str, Any]

_QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
                     r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")


@dataclass(frozen=True)
class Rule:
    """A CEL rule (``x-kubernetes-validations``) enforced by the apiserver on an object.

    Used for the checks CDI's validating webhook does that a plain schema cannot express, with
    CDI's own messages, so we need no webhook for them.
    """

    rule: str
    message: str


class Api:
    """Base of every API object type: gives the optional class-level CEL rules a typed home."""

    rules: ClassVar[tuple[Rule, ...]] = ()


def prop(doc: str = "", *, json: str | None = None, required: bool = False, schema: Schema | None = None,
         **extra: Any) -> Any:
    """Declare a field: its description, JSON name (default: camelCase of the Python name),
    whether the apiserver requires it, and schema extras (``pattern``, ``maxItems``, ...).

    Optional fields default to ``None`` so an unset field is omitted from JSON, as Go's
    ``omitempty`` does. ``schema`` takes extras whose names are not Python identifiers.
    """
    meta = {"doc": doc, "json": json, "extra": {**extra, **(schema or {})}}
    if required:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=None, metadata=meta)


def json_name(f: dataclasses.Field[Any]) -> str:
    """The JSON name of a field: explicit, else snake_case turned camelCase."""
    explicit = f.metadata.get("json")
    if explicit:
        return str(explicit)
    head, *rest = f.name.rstrip("_").split("_")
    return head + "".join(word.capitalize() for word in rest)


def _unwrap_optional(tp: Any) -> Any:
    """``X | None`` → ``X``; other types unchanged."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _scalar_schema(tp: Any) -> Schema | None:
    special: dict[Any, Schema] = {
        Quantity: {"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": _QUANTITY_PATTERN,
                   "x-kubernetes-int-or-string": True},
        Time: {"type": "string", "format": "date-time"},
        Duration: {"type": "string"},
        RawObject: {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        str: {"type": "string"},
        bool: {"type": "boolean"},
        int: {"type": "integer", "format": "int32"},
    }
    return dict(special[tp]) if tp in special else None


def type_schema(tp: Any) -> Schema:
    """The structural schema of one Python type annotation."""
    tp = _unwrap_optional(tp)
    scalar = _scalar_schema(tp)
    if scalar is not None:
        return scalar
    origin = get_origin(tp)
    if origin is Literal:
        return {"type": "string", "enum": list(get_args(tp))}
    if origin is list:
        return {"type": "array", "items": type_schema(get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(get_args(tp)[1])}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return object_schema(tp)
    raise TypeError(f"no schema for type {tp!r}")


def field_schema(f: dataclasses.Field[Any], tp: Any) -> Schema:
    """A property's schema: its type's schema plus description and extras."""
    schema = type_schema(tp)
    if f.metadata.get("doc"):
        schema = {"description": f.metadata["doc"], **schema}
    for key, value in f.metadata.get("extra", {}).items():
        if value is None:  # an extra set to None removes a key the type implies (e.g. enum)
            schema.pop(key, None)
        else:
            schema[key] = value
    return schema


def _is_required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def object_schema(cls: type) -> Schema:
    """The schema of a dataclass: properties, required names, CEL rules, description."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    schema: Schema = {"type": "object"}
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    if fields:
        schema["properties"] = {json_name(f): field_schema(f, hints[f.name]) for f in fields}
    required = [json_name(f) for f in fields if _is_required(f)]
    if required:
        schema["required"] = required
    rules: tuple[Rule, ...] = getattr(cls, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": r.rule, "message": r.message} for r in rules]
    return schema


def to_json(value: Any) -> Any:
    """An API object as JSON-ready data; ``None`` fields are omitted (Go's ``omitempty``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {json_name(f): to_json(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


T = TypeVar("T")


def _from_json_value(tp: Any, data: Any) -> Any:
    tp = _unwrap_optional(tp)
    if data is None:
        return None
    if get_origin(tp) is list:
        return [_from_json_value(get_args(tp)[0], v) for v in data]
    if get_origin(tp) is dict:
        return {k: _from_json_value(get_args(tp)[1], v) for k, v in data.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_json(tp, data)
    if tp is Quantity and isinstance(data, int):
        return str(data)
    return data


def from_json(cls: type[T], data: dict[str, Any]) -> T:
    """Build an API object from JSON data (as the apiserver returns it); unknown keys are ignored,
    as the apiserver's pruning would have dropped them anyway."""
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _from_json_value(hints[f.name], data.get(json_name(f)))
              for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if json_name(f) in data}
    return cls(**kwargs)
