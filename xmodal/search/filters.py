"""Structured JSON filters over item metadata, compiled to SQLAlchemy expressions (never raw SQL).

Grammar:

- leaf: ``{"field": NAME, "op": OP, "value": V}``; OP is ``eq ne in nin gt gte lt lte range exists``;
  ``in``/``nin`` take a non-empty list; ``range`` takes ``{"gte"|"gt": a, "lte"|"lt": b}``;
  ``exists`` takes true or false.
- ``{"and": [f, ...]}``, ``{"or": [f, ...]}``, ``{"not": f}``.

Fields are ``modality`` and ``id`` (columns) and the collection's metadata keys, each with a type
inferred from the items (``string``, ``integer``, ``number``, ``boolean``). Bounds: depth 8, 64 leaves,
1,000 values in a list, strings of 1,000 characters. Anything else is a ``FilterError`` whose message
names where in the filter it is.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, not_, or_, select, true

from xmodal.errors import UserError
from xmodal.storage.catalog import STATUS_OK, Catalog, Item

OPS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "range", "exists")
ORDERED = frozenset({"gt", "gte", "lt", "lte", "range"})
MAX_DEPTH = 8
MAX_LEAVES = 64
MAX_VALUES = 1000
MAX_STRING = 1000
COLUMNS = {"modality": "string", "id": "integer"}


class FilterError(UserError):
    """A filter that is malformed, too big, or names an unknown field or operator."""


def _type_of(value: Any) -> str | None:
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def metadata_fields(catalog: Catalog, collection_id: int, *, sample: int = 10_000) -> dict[str, str]:
    """Metadata keys of the collection's most recent ``sample`` ok items, with their JSON types.
    Integers and floats mixed make ``number``; any other mix makes ``string`` (compared as text)."""
    seen: dict[str, set[str]] = {}
    q = (select(Item.meta).where(Item.collection_id == collection_id, Item.status == STATUS_OK)
         .order_by(Item.id.desc()).limit(sample))
    with catalog.Session() as s:
        for meta in s.scalars(q):
            for key, value in (meta or {}).items():
                kind = _type_of(value)
                if kind is not None and key not in COLUMNS:
                    seen.setdefault(key, set()).add(kind)
    out: dict[str, str] = {}
    for key, kinds in sorted(seen.items()):
        if len(kinds) == 1:
            out[key] = next(iter(kinds))
        elif kinds <= {"integer", "number"}:
            out[key] = "number"
        else:
            out[key] = "string"
    return out


def compile_filter(spec: Any, fields: dict[str, str]) -> ColumnElement[bool]:
    """Validate ``spec`` against the known fields and return the SQLAlchemy condition on ``Item``."""
    leaves = [0]
    return _node(spec, {**fields, **COLUMNS}, "filters", 1, leaves)


def _node(spec: Any, fields: dict[str, str], path: str, depth: int, leaves: list[int]) -> ColumnElement[bool]:
    if depth > MAX_DEPTH:
        raise FilterError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(spec, dict):
        raise FilterError(f"{path}: expected an object, got {type(spec).__name__}")
    if "field" in spec:
        leaves[0] += 1
        if leaves[0] > MAX_LEAVES:
            raise FilterError(f"{path}: more than {MAX_LEAVES} conditions")
        # two-valued: a missing field makes a condition false (not NULL), so that `not` includes it
        return func.coalesce(_leaf(spec, fields, path), false())
    if len(spec) != 1:
        raise FilterError(f"{path}: expected one of 'field', 'and', 'or', 'not', got keys {sorted(spec)}")
    (key, value), = spec.items()
    if key in ("and", "or"):
        if not isinstance(value, list) or not value:
            raise FilterError(f"{path}.{key}: expected a non-empty list of filters")
        parts = [_node(v, fields, f"{path}.{key}[{i}]", depth + 1, leaves) for i, v in enumerate(value)]
        return and_(*parts) if key == "and" else or_(*parts)
    if key == "not":
        return not_(_node(value, fields, f"{path}.not", depth + 1, leaves))
    raise FilterError(f"{path}: unknown key {key!r} (use 'field', 'and', 'or' or 'not')")


def _leaf(spec: dict[str, Any], fields: dict[str, str], path: str) -> ColumnElement[bool]:
    extra = set(spec) - {"field", "op", "value"}
    if extra:
        raise FilterError(f"{path}: unknown keys {sorted(extra)} (a condition has field, op, value)")
    name = spec["field"]
    if not isinstance(name, str) or name not in fields:
        known = ", ".join(sorted(fields)) or "none"
        raise FilterError(f"{path}.field: unknown field {name!r} (fields: {known})")
    op = spec.get("op")
    if op not in OPS:
        raise FilterError(f"{path}.op: unknown operator {op!r} (known: {', '.join(OPS)})")
    if "value" not in spec:
        raise FilterError(f"{path}.value: missing")
    kind = fields[name]
    value = spec["value"]
    column = _column(name, kind)
    if op == "exists":
        if not isinstance(value, bool):
            raise FilterError(f"{path}.value: exists takes true or false")
        # a key holding JSON null counts as absent; columns always exist
        present = true() if name in COLUMNS else Item.meta[name].as_string().is_not(None)
        return present if value else not_(present)
    if op in ORDERED and kind not in ("integer", "number", "string"):
        raise FilterError(f"{path}.op: {op} does not apply to {kind} field {name!r}")
    if op in ("in", "nin"):
        if not isinstance(value, list) or not value or len(value) > MAX_VALUES:
            raise FilterError(f"{path}.value: {op} takes a non-empty list of at most {MAX_VALUES} values")
        values = [_check(v, kind, f"{path}.value[{i}]") for i, v in enumerate(value)]
        return column.in_(values) if op == "in" else or_(column.is_(None), column.not_in(values))
    if op == "range":
        if not isinstance(value, dict) or not value or set(value) - {"gt", "gte", "lt", "lte"}:
            raise FilterError(f"{path}.value: range takes an object with gt/gte and/or lt/lte")
        bounds = [_compare(column, o, _check(v, kind, f"{path}.value.{o}")) for o, v in value.items()]
        return and_(*bounds)
    checked = _check(value, kind, f"{path}.value")
    if op == "ne":
        return or_(column.is_(None), column != checked)
    return _compare(column, op, checked)


def _column(name: str, kind: str) -> Any:
    if name == "modality":
        return Item.modality
    if name == "id":
        return Item.id
    element = Item.meta[name]
    return {"string": element.as_string(), "integer": element.as_integer(), "number": element.as_float(),
            "boolean": element.as_boolean()}[kind]


def _compare(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op == "eq":
        return column == value  # type: ignore[no-any-return]
    if op == "gt":
        return column > value  # type: ignore[no-any-return]
    if op == "gte":
        return column >= value  # type: ignore[no-any-return]
    if op == "lt":
        return column < value  # type: ignore[no-any-return]
    if op == "lte":
        return column <= value  # type: ignore[no-any-return]
    return false()


def _check(value: Any, kind: str, path: str) -> Any:
    actual = _type_of(value)
    if kind == "number" and actual in ("integer", "number"):
        return float(value)
    if actual != kind:
        raise FilterError(f"{path}: expected a {kind}, got {json_type(value)}")
    if isinstance(value, str) and len(value) > MAX_STRING:
        raise FilterError(f"{path}: string longer than {MAX_STRING} characters")
    return value


def json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)
