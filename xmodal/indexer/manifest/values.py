"""What a manifest row's cells become: its id, its media values and its typed metadata.

The id is text (an integer id is kept as its digits); a media value is a URI (relative paths resolved
against the manifest's folder, ``file://`` URIs made local catalog URIs) or, for a ``"text"`` column,
the text itself. A metadata cell takes its declared type (``ColumnType``), else keeps the type JSON or
Parquet gave it, else (CSV) is typed from its text. A value that cannot be read raises ``_RowError``,
whose message says why; the reader decides whether that skips the row or drops the field.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

from xmodal.storage.uris import path_to_uri

ColumnType = Literal["str", "int", "float", "bool", "list"]

COLUMN_TYPES: frozenset[str] = frozenset({"str", "int", "float", "bool", "list"})
ID_COLUMN = "id"
# Columns whose type a product catalog implies: a title "1984" is text, a price "12" a float.
WELL_KNOWN_TYPES: Mapping[str, ColumnType] = {
    "title": "str",
    "category": "str",
    "brand": "str",
    "price": "float",
    "tags": "list",
}
_MAX_SAFE_INT = 2**53  # larger integers lose precision as JSON numbers in most readers: kept as text
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")  # no "+", no leading zeros: "+4930..." and "007" stay text
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")  # no exponent: "2E10" is a part number
_DECLARED_INT = re.compile(r"[+-]?[0-9]+")
_DECLARED_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_OMIT: Any = object()  # "no value": empty cell, null, NaN


class _RowError(Exception):
    """A value that makes its row (or field) unreadable; the message is for people."""


def _source_id(value: Any) -> str:
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, bool):
        raise _RowError(f"id {value!r} is a boolean, not text or an integer: row skipped")
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float) and value.is_integer():  # pandas writes int ids of a column with NaN so
        text = str(int(value))
    elif isinstance(value, bytes):
        try:
            text = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise _RowError("id is not valid UTF-8: row skipped") from None
    elif value is None or (isinstance(value, float) and math.isnan(value)):
        text = ""
    else:
        raise _RowError(f"id {value!r} is not text or an integer: row skipped")
    if not text:
        raise _RowError("empty id: row skipped")
    return text


def _try_source_id(values: Mapping[str, Any]) -> str | None:
    for name, value in values.items():
        if isinstance(name, str) and _column_name(name) == ID_COLUMN:
            try:
                return _source_id(value)
            except _RowError:
                return None
    return None


def _media_text(column: str, value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _RowError(f"{column}: not valid UTF-8 text") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _RowError(f"{column}: expected text, found {_json_kind(value)}")
    return value.strip() or None


def _media_uri(column: str, value: Any, base_dir: str) -> str | None:
    """The URI of a media value: URLs as given, file:// and paths as the catalog's local URIs."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _RowError(f"{column}: not valid UTF-8") from None
    if not isinstance(value, str):
        raise _RowError(f"{column}: expected a path or URI, found {_json_kind(value)}")
    text = value.strip()
    if not text:
        return None
    match = _SCHEME.match(text)
    if match is None:  # a local path; relative to the manifest's folder
        return path_to_uri(os.path.normpath(os.path.join(base_dir, text)))
    if match.group(1).lower() != "file":
        return text
    rest = text[match.end():]
    if rest.lower().startswith("localhost/"):
        rest = rest[len("localhost"):]
    if not rest.startswith("/"):
        raise _RowError(f"{column}: file URI {text!r} names a host; only local files are read")
    return path_to_uri(os.fsdecode(unquote_to_bytes(rest)))


def _metadata_value(value: Any, kind: ColumnType | None, *, typed: bool) -> Any:
    """The JSON value of a metadata cell, or ``_OMIT``; ``_RowError`` when it can't take its type.

    ``typed``: the value comes with a type (JSON, Parquet); otherwise it is CSV text to type here.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return _OMIT
        if kind is None:
            return value if typed else _infer(text)
        if kind == "list":
            items = [item.strip() for item in text.split("|" if "|" in text else ";")]
            return [item for item in items if item] or _OMIT
        if kind == "str":
            return value if typed else text
        return _coerce(text, kind)
    value = _plain(value)
    if value is _OMIT or value == [] or value == {}:  # an empty list is an empty cell too
        return _OMIT
    if kind is None:
        return value
    if kind == "list":
        if isinstance(value, dict):
            raise _RowError("an object, not a list")
        items = value if isinstance(value, list) else [value]
        items = [item.strip() if isinstance(item, str) else item for item in items]
        return [item for item in items if item != ""] or _OMIT
    return _coerce(value, kind)


def _infer(text: str) -> Any:
    """The type a CSV cell's text reads as: int, float, bool, else the text."""
    if _INT.fullmatch(text):
        number = int(text)
        return number if abs(number) <= _MAX_SAFE_INT else text
    if _DECIMAL.fullmatch(text):
        return float(text)
    low = text.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    return text


def _coerce(value: Any, kind: ColumnType) -> Any:
    """A scalar converted to a declared "str", "int", "float" or "bool"."""
    if isinstance(value, (list, dict)):
        raise _RowError(f"{_json_kind(value)}, not {_KIND_NAMES[kind]}")
    if kind == "str":
        if isinstance(value, bool):
            return "true" if value else "false"
        return value if isinstance(value, str) else str(value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        key = value.strip().lower() if isinstance(value, str) else value
        if key in _TRUE or key == 1:
            return True
        if key in _FALSE or key == 0:
            return False
        raise _RowError(f"{value!r} is not a boolean")
    if isinstance(value, bool):
        raise _RowError(f"{value!r} is a boolean, not {_KIND_NAMES[kind]}")
    if isinstance(value, str):
        text = value.strip()
        if kind == "int" and _DECLARED_INT.fullmatch(text):
            return int(text)
        if kind == "float" and _DECLARED_FLOAT.fullmatch(text):
            number = float(text)
            if math.isfinite(number):
                return number
        raise _RowError(f"{value!r} is not {_KIND_NAMES[kind]}")
    if kind == "float":
        return float(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise _RowError(f"{value!r} is not {_KIND_NAMES[kind]}")
    return value


_KIND_NAMES: Mapping[str, str] = {"str": "text", "int": "an integer", "float": "a number", "bool": "a boolean",
                                  "list": "a list"}


def _plain(value: Any) -> Any:
    """A JSON-ready value from what json or pyarrow gave, or ``_OMIT`` for nothing (null, NaN)."""
    if value is None:
        return _OMIT
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _OMIT
    if isinstance(value, decimal.Decimal):
        number = float(value)
        return number if math.isfinite(number) else _OMIT
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _RowError("binary value, not UTF-8 text") from None
    if isinstance(value, (list, tuple)):
        items = [_plain(item) for item in value]
        return [item for item in items if item is not _OMIT]
    if isinstance(value, dict):  # inside an object a null is data, not an empty cell
        pairs = {str(k): _plain(v) for k, v in value.items()}
        return {k: None if v is _OMIT else v for k, v in pairs.items()}
    raise _RowError(f"unsupported value of type {type(value).__name__}")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _column_name(name: Any) -> str:
    return str(name).strip().lower()
