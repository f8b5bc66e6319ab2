"""Structured JSON filters over items, validated and compiled to SQLAlchemy expressions (never raw SQL).

Grammar (plain JSON):

- leaf: ``{"field": NAME, "op": OP, "value": V}``, OP one of ``eq ne in nin gt gte lt lte range exists``.
  ``in``/``nin`` take a non-empty list (at most 1,000 values); ``range`` takes an object with one lower
  bound (``gt`` or ``gte``) and/or one upper bound (``lt`` or ``lte``); ``exists`` takes true or false.
- boolean: ``{"and": [f, ...]}``, ``{"or": [f, ...]}`` (non-empty lists), ``{"not": f}``.
- bounds: depth 8, 64 leaves, 10,000 in/nin values in all, strings of 1,000 characters.

Fields: the columns ``id`` (integer), ``modality`` (string), ``uri`` and ``source_id`` (a manifest
row's id) (strings; eq, ne, in, nin, exists), and the collection's metadata keys (``Item.meta[NAME]``) with their types (see
``metadata_fields``):

- ``string``, ``integer``, ``number``: every operator; strings order by code point on both databases.
  ``integer`` takes integer values, ``number`` integers or floats.
- ``boolean``: eq, ne, in, nin, exists.
- ``list`` (e.g. tags): ``eq`` means "contains the value", ``in`` "contains one of the values", ``ne``
  and ``nin`` their negations, and ``exists``; values are strings or numbers.

Semantics are two-valued: a condition on an item that lacks the field, or holds a value of another
JSON type, is false, so ``ne``, ``nin`` and ``not`` include such items. A key holding JSON null counts as
absent for ``exists``. Every comparison is guarded by the value's JSON type, so a stray value of another
type never errors (PostgreSQL casts) nor compares across types (SQLite).

Anything malformed, too big, or naming an unknown field or operator raises ``FilterError`` (a
``UserError``; the API answers 422) whose message starts with the path inside the filter, e.g.
``filters.and[1].op: unknown operator 'like' (known: eq, ne, ...)``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Float,
    Integer,
    Numeric,
    Select,
    String,
    and_,
    case,
    cast,
    collate,
    false,
    func,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from xmodal.errors import UserError
from xmodal.storage.catalog import STATUS_OK, Catalog, Item

OPS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "range", "exists")
FIELD_TYPES = ("string", "integer", "number", "boolean", "list")
COLUMNS = {"id": "integer", "modality": "string", "uri": "string", "source_id": "string"}
MAX_DEPTH = 8
MAX_LEAVES = 64
MAX_VALUES = 1000
MAX_TOTAL_VALUES = 10_000  # in all in/nin lists together: stays under SQLite's 32,766 parameters
MAX_STRING = 1000

_ORDERED = ("gt", "gte", "lt", "lte", "range")
_EQUALITY = ("eq", "ne", "in", "nin", "exists")
_INT64 = (-(2**63), 2**63 - 1)
# JSON types as each database names them, per field type (integers and floats compare as numbers)
_SQLITE_TYPES = {"string": ("text",), "integer": ("integer", "real"), "number": ("integer", "real"),
                 "boolean": ("true", "false")}
_PG_TYPES = {"string": "string", "integer": "number", "number": "number", "boolean": "boolean"}
_SQLITE_SQL_TYPES = {"string": String, "integer": Integer, "number": Float, "boolean": Boolean}

_Q = TypeVar("_Q", bound=Select[Any])


class FilterError(UserError):
    """A filter that is malformed, too big, or names an unknown field or operator."""


# public API -------------------------------------------------------------------------------------


def compile_filter(spec: Any, fields: dict[str, str]) -> ColumnElement[bool]:
    """Validate ``spec`` against ``fields`` (metadata name -> type) and return a condition on ``Item``."""
    for name, kind in fields.items():
        if kind not in FIELD_TYPES:
            raise ValueError(f"field {name!r} has type {kind!r}, not one of {', '.join(FIELD_TYPES)}")
    return _Compiler({**fields, **COLUMNS}).node(spec, "filters", 1)


@dataclass(frozen=True)
class Filter:
    """A validated filter: its JSON (which the searcher's plan evaluates on its column view of the
    metadata, ``search.plans``), the field types it was checked against, and its SQL condition (the
    truth, applied at hydration)."""

    spec: Any
    fields: dict[str, str]
    condition: ColumnElement[bool]


def prepare_filter(spec: Any, fields: dict[str, str]) -> Filter:
    """``compile_filter`` keeping the JSON beside the condition, for ``Searcher.run(where=...)``."""
    return Filter(spec, dict(fields), compile_filter(spec, fields))


def apply_filter(query: _Q, spec: Any, fields: dict[str, str]) -> _Q:
    """``query.where(compile_filter(spec, fields))``, or ``query`` itself when ``spec`` is None."""
    return query if spec is None else query.where(compile_filter(spec, fields))


def metadata_fields(catalog: Catalog, collection_id: int, *, sample: int = 10_000) -> dict[str, str]:
    """Metadata keys of the collection's ``sample`` most recent ok items, with their types.

    A value's type is ``boolean`` (checked before ``integer``: a bool is an int in Python), ``integer``,
    ``number`` (a float), ``string`` or ``list``; nulls and objects are ignored. Integers mixed with
    floats make ``number``. Any other mix takes the type most items have (ties: string, number,
    integer, boolean, list): values of the other types then never match a comparison, and one stray
    value does not stop range filters on an otherwise numeric field. Keys named like a column
    (``id``, ``modality``, ``uri``) or containing a double quote are left out.
    """
    if sample < 1:
        raise ValueError("sample must be at least 1")
    seen: dict[str, Counter[str]] = {}
    q = (select(Item.meta).where(Item.collection_id == collection_id, Item.status == STATUS_OK)
         .order_by(Item.id.desc()).limit(sample))
    with catalog.Session() as s:
        for meta in s.scalars(q):
            for key, value in (meta or {}).items():
                kind = value_type(value)
                if kind is not None and key not in COLUMNS and '"' not in key:
                    seen.setdefault(key, Counter())[kind] += 1
    return {key: _settle(kinds) for key, kinds in sorted(seen.items())}


def field_value(name: str, kind: str, dialect: str) -> ColumnElement[Any]:
    """A field as a typed SQL value on ``dialect`` (``Catalog.backend``), NULL where an item lacks it or holds a
    value of another JSON type: what sorting and facet counts read (``search.browse``). Strings compare by
    code point on both databases; ``id`` and ``source_id`` are the columns. Not for list fields
    (:func:`list_elements`)."""
    if name in COLUMNS:
        return _column_operand(name)  # type: ignore[no-any-return]
    if kind not in ("string", "integer", "number", "boolean"):
        raise ValueError(f"field {name!r} is a {kind}: it has no single value")
    operand = _meta_operand(name, kind, dialect)
    return collate(operand, "C") if kind == "string" and dialect == "postgresql" else operand


def list_elements(name: str, dialect: str) -> tuple[ColumnElement[Any], ColumnElement[bool], Any]:
    """The elements of the list field ``name`` as rows: (an element's value, the condition that keeps the
    items whose field is a list and the elements that are strings or numbers, the table function to join
    to ``items``: it reads each item's list, as ``_list_contains`` does). On PostgreSQL an element is its
    JSON value (psycopg hands it back as a Python string or number)."""
    if dialect == "sqlite":
        path = _sqlite_path(name)
        each = func.json_each(Item.meta, path).table_valued("value", "type")
        return each.c.value, and_(func.json_type(Item.meta, path) == "array",
                                  each.c.type.in_(("text", "integer", "real"))), each
    array = cast(Item.meta[name], JSONB)
    listed = case((func.jsonb_typeof(array) == "array", array), else_=cast("[]", JSONB))
    element = func.jsonb_array_elements(listed).table_valued("value").render_derived()
    return element.c.value, func.jsonb_typeof(element.c.value).in_(("string", "number")), element


def value_type(value: Any) -> str | None:
    """The field type of one metadata value, or None for null, objects and anything else."""
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return None


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for messages."""
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _settle(kinds: Counter[str]) -> str:
    if "integer" in kinds and "number" in kinds:
        kinds["number"] += kinds.pop("integer")
    preference = {"string": 4, "number": 3, "integer": 2, "boolean": 1, "list": 0}
    return max(kinds, key=lambda k: (kinds[k], preference[k]))


# per-dialect expressions ------------------------------------------------------------------------


class _ByDialect(ColumnElement[bool]):
    """One condition per database, chosen when the statement is compiled.

    Every branch is built up front and traversed, so statement caching and bound parameters work as
    for any other construct. ``generic`` (None where there is no portable form) serves other dialects.
    """

    _traverse_internals = [
        ("sqlite", InternalTraversal.dp_clauseelement),
        ("postgresql", InternalTraversal.dp_clauseelement),
        ("generic", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, sqlite: ColumnElement[bool], postgresql: ColumnElement[bool],
                 generic: ColumnElement[bool] | None) -> None:
        self.sqlite = sqlite
        self.postgresql = postgresql
        self.generic = generic
        self.type = Boolean()

    @property
    def _from_objects(self) -> list[Any]:
        return self.sqlite._from_objects


@compiles(_ByDialect)
def _compile_by_dialect(element: _ByDialect, compiler: SQLCompiler, **kw: Any) -> str:
    name = compiler.dialect.name
    chosen = {"sqlite": element.sqlite, "postgresql": element.postgresql}.get(name, element.generic)
    if chosen is None and name == "default":  # str(statement): show the SQLite form
        chosen = element.sqlite
    if chosen is None:
        raise CompileError(f"this filter needs SQLite or PostgreSQL, not {name}")
    return compiler.process(chosen, **kw)


def _sqlite_path(name: str) -> str:
    return f'$."{name}"'  # the path SQLAlchemy itself uses for Item.meta[name] on SQLite


def _meta_operand(name: str, kind: str, dialect: str) -> ColumnElement[Any]:
    """Item.meta[name] as a SQL value of the field's type, NULL where the JSON value has another type."""
    if dialect == "sqlite":
        path = _sqlite_path(name)
        extracted: ColumnElement[Any] = func.json_extract(Item.meta, path, type_=_SQLITE_SQL_TYPES[kind])
        return case((func.json_type(Item.meta, path).in_(_SQLITE_TYPES[kind]), extracted))
    element = Item.meta[name]
    if dialect == "postgresql":
        text = element.as_string()
        # NUMERIC holds any JSON number exactly (an "integer" field may hold 2.5 or 2**63 - 1)
        value = text if kind == "string" else cast(text, Boolean if kind == "boolean" else Numeric)
        return case((func.json_typeof(element) == _PG_TYPES[kind], value))
    return {"string": element.as_string(), "integer": element.as_integer(), "number": element.as_float(),
            "boolean": element.as_boolean()}[kind]


def _column_operand(name: str) -> Any:
    return {"id": Item.id, "modality": Item.modality, "uri": Item.uri, "source_id": Item.source_id}[name]


def _compare(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op == "eq":
        return column == value  # type: ignore[no-any-return]
    if op == "in":
        return column.in_(value)  # type: ignore[no-any-return]
    if op == "gt":
        return column > value  # type: ignore[no-any-return]
    if op == "gte":
        return column >= value  # type: ignore[no-any-return]
    if op == "lt":
        return column < value  # type: ignore[no-any-return]
    if op == "lte":
        return column <= value  # type: ignore[no-any-return]
    if op == "range":
        return and_(*(_compare(column, bound, v) for bound, v in value.items()))
    raise AssertionError(op)


def _scalar_condition(name: str, kind: str, op: str, value: Any) -> ColumnElement[bool]:
    """``op`` (eq, in, gt, gte, lt, lte, range) on a column or a typed metadata value, per dialect."""
    def build(dialect: str) -> ColumnElement[bool]:
        operand = _column_operand(name) if name in COLUMNS else _meta_operand(name, kind, dialect)
        if kind == "string" and op in _ORDERED and dialect == "postgresql":
            operand = collate(operand, "C")  # code point order, as SQLite's BINARY
        return _compare(operand, op, value)

    return _ByDialect(build("sqlite"), build("postgresql"), build("generic"))


def _list_contains(name: str, values: list[Any]) -> ColumnElement[bool]:
    """The list at Item.meta[name] holds one of ``values`` (strings or numbers)."""
    strings = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if not isinstance(v, str)]
    path = _sqlite_path(name)
    each = func.json_each(Item.meta, path).table_valued("value", "type")
    matches = []
    if strings:
        matches.append(and_(each.c.type == "text", each.c.value.in_(strings)))
    if numbers:
        matches.append(and_(each.c.type.in_(("integer", "real")), each.c.value.in_(numbers)))
    on_sqlite = and_(func.json_type(Item.meta, path) == "array",
                     select(each.c.value).where(or_(*matches)).exists())
    # jsonb containment: an array contains [v] when one element equals v (3 equals 3.0); a scalar never
    array = cast(Item.meta[name], JSONB)
    on_postgresql = or_(*(array.contains([v]) for v in values))
    return _ByDialect(on_sqlite, on_postgresql, None)


# validation -------------------------------------------------------------------------------------


def _text(value: str, path: str) -> None:
    """Strings reach SQL as UTF-8: one holding a lone surrogate (``"\\ud800"`` in JSON) is no text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FilterError(f"{path}: not valid Unicode text (it holds a lone surrogate)") from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


class _Compiler:
    """Walks one filter, counting leaves, and builds its condition."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        self.leaves = 0
        self.listed = 0

    def node(self, spec: Any, path: str, depth: int) -> ColumnElement[bool]:
        if depth > MAX_DEPTH:
            raise FilterError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if not isinstance(spec, dict):
            raise FilterError(f"{path}: expected an object, got {json_type(spec)}")
        if "field" in spec or "op" in spec or "value" in spec:
            self.leaves += 1
            if self.leaves > MAX_LEAVES:
                raise FilterError(f"{path}: more than {MAX_LEAVES} conditions in one filter")
            return self.leaf(spec, path)
        if len(spec) != 1:
            got = ", ".join(_show(k) for k in spec) or "none"
            raise FilterError(f"{path}: expected 'field' (a condition) or one of 'and', 'or', 'not' "
                              f"(got keys: {got})")
        ((key, value),) = spec.items()
        if key in ("and", "or"):
            if not isinstance(value, list) or not value:
                got = "an empty list" if isinstance(value, list) else json_type(value)
                raise FilterError(f"{path}.{key}: expected a non-empty list of filters, got {got}")
            parts = [self.node(v, f"{path}.{key}[{i}]", depth + 1) for i, v in enumerate(value)]
            return and_(*parts) if key == "and" else or_(*parts)
        if key == "not":
            return not_(self.node(value, f"{path}.not", depth + 1))
        raise FilterError(f"{path}: unknown key {_show(key)} (use 'field', 'and', 'or' or 'not')")

    def leaf(self, spec: dict[str, Any], path: str) -> ColumnElement[bool]:
        extra = [k for k in spec if k not in ("field", "op", "value")]
        if extra:
            raise FilterError(f"{path}: unknown key {_show(extra[0])} (a condition has field, op, value)")
        if "field" not in spec:
            raise FilterError(f"{path}.field: missing")
        name = spec["field"]
        if not isinstance(name, str):
            raise FilterError(f"{path}.field: expected a string, got {json_type(name)}")
        _text(name, f"{path}.field")
        if name not in self.fields:
            known = ", ".join(sorted(self.fields))
            raise FilterError(f"{path}.field: unknown field {_show(name)} (fields: {known})")
        if '"' in name:
            raise FilterError(f"{path}.field: field names with a double quote cannot be filtered on")
        if "op" not in spec:
            raise FilterError(f"{path}.op: missing (one of {', '.join(OPS)})")
        op = spec["op"]
        if not isinstance(op, str) or op not in OPS:
            raise FilterError(f"{path}.op: unknown operator {_show(op)} (known: {', '.join(OPS)})")
        kind = self.fields[name]
        allowed = _EQUALITY if kind in ("boolean", "list") or name == "uri" else OPS
        if op not in allowed:
            what = "column" if name in COLUMNS else f"{kind} field"
            raise FilterError(f"{path}.op: {op} does not apply to {what} {name!r} (use: {', '.join(allowed)})")
        if "value" not in spec:
            raise FilterError(f"{path}.value: missing")
        value = spec["value"]
        # two-valued logic: NULL (missing field, other JSON type) becomes false, so `not` includes it
        if op == "exists":
            if not isinstance(value, bool):
                raise FilterError(f"{path}.value: exists takes true or false, got {json_type(value)}")
            present = true() if name in COLUMNS else Item.meta[name].as_string().is_not(None)
            return present if value else not_(present)
        positive = {"ne": "eq", "nin": "in"}.get(op, op)
        if kind == "list":
            values = self.values(value, path, op, self.element) if positive == "in" else [
                self.element(value, f"{path}.value")]
            condition = func.coalesce(_list_contains(name, values), false())
        else:
            def check(v: Any, where: str) -> Any:
                return self.scalar(v, kind, where)
            if positive == "in":
                checked: Any = self.values(value, path, op, check)
            elif op == "range":
                checked = self.bounds(value, path, check)
            else:
                checked = check(value, f"{path}.value")
            condition = func.coalesce(_scalar_condition(name, kind, positive, checked), false())
        return not_(condition) if positive != op else condition

    def values(self, value: Any, path: str, op: str, check: Callable[[Any, str], Any]) -> list[Any]:
        if not isinstance(value, list) or not value or len(value) > MAX_VALUES:
            raise FilterError(f"{path}.value: {op} takes a non-empty list of at most {MAX_VALUES} values")
        self.listed += len(value)
        if self.listed > MAX_TOTAL_VALUES:
            raise FilterError(f"{path}.value: more than {MAX_TOTAL_VALUES} in/nin values in one filter")
        return [check(v, f"{path}.value[{i}]") for i, v in enumerate(value)]

    @staticmethod
    def bounds(value: Any, path: str, check: Callable[[Any, str], Any]) -> dict[str, Any]:
        usage = f"{path}.value: range takes an object with gt or gte and/or lt or lte"
        if not isinstance(value, dict) or not value:
            raise FilterError(usage)
        unknown = [k for k in value if k not in ("gt", "gte", "lt", "lte")]
        if unknown:
            raise FilterError(f"{usage} (got {_show(unknown[0])})")
        if ("gt" in value and "gte" in value) or ("lt" in value and "lte" in value):
            raise FilterError(f"{usage}, one lower and one upper bound at most")
        return {bound: check(v, f"{path}.value.{bound}") for bound, v in value.items()}

    @staticmethod
    def scalar(value: Any, kind: str, path: str) -> Any:
        """``value`` checked against a field type (an integer is a valid number)."""
        actual = value_type(value)
        if actual != kind and not (kind == "number" and actual == "integer"):
            raise FilterError(f"{path}: expected {_article(kind)} {kind}, got {json_type(value)}")
        return _Compiler.bounded(value, path)

    @staticmethod
    def element(value: Any, path: str) -> Any:
        """A value to look for in a list field: a string or a number."""
        if value_type(value) not in ("string", "integer", "number"):
            raise FilterError(f"{path}: expected a string or a number, got {json_type(value)}")
        return _Compiler.bounded(value, path)

    @staticmethod
    def bounded(value: Any, path: str) -> Any:
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise FilterError(f"{path}: string longer than {MAX_STRING} characters")
        if isinstance(value, str):
            _text(value, path)
        if isinstance(value, float) and not math.isfinite(value):
            raise FilterError(f"{path}: expected a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
            raise FilterError(f"{path}: integer out of the 64-bit range")
        return value
