"""Catalog URIs of local files.

A local file's URI is its absolute path, kept as typed so that people can read and match it. A name
holding bytes that are not UTF-8 (possible on Linux) becomes a percent-encoded ``file://`` URI, so
that it can still be stored in SQL and opened again.
"""

from __future__ import annotations

import os
from urllib.parse import quote_from_bytes, unquote_to_bytes

FILE_SCHEME = "file://"


def path_to_uri(path: str) -> str:
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return FILE_SCHEME + quote_from_bytes(os.fsencode(path))


def uri_to_path(uri: str) -> str:
    if uri.startswith(FILE_SCHEME):
        return os.fsdecode(unquote_to_bytes(uri[len(FILE_SCHEME):]))
    return uri


def is_under(path: str, roots: list[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or lies below one (plain string paths, compared as given)."""
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


#: catalog keys of manifest entries start with this (they are not file paths)
KEY_PREFIX = "manifest:"


def entry_key(source_id: str, column: str) -> str:
    """The catalog key of an entry. ``%`` and ``#`` in the id are percent-escaped, nothing else, so the
    key stays readable for any id (non-ASCII, spaces, slashes) and :func:`parse_key` undoes it."""
    return f"{KEY_PREFIX}{source_id.replace('%', '%25').replace('#', '%23')}#{column}"


def parse_key(key: str) -> tuple[str, str]:
    """``(source_id, column)`` of a key made by :func:`entry_key`; ``ValueError`` for anything else."""
    if not key.startswith(KEY_PREFIX) or "#" not in key:
        raise ValueError(f"not a manifest key: {key!r}")
    escaped, _, column = key[len(KEY_PREFIX):].partition("#")
    return escaped.replace("%23", "#").replace("%25", "%"), column
