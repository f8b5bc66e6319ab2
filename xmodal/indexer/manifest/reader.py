"""The manifest reader: checks the arguments and the file, then turns each row into entries.

:class:`ManifestReader` checks what can be checked before reading (media columns, declared types, the
file, its header) and raises :class:`ManifestError` for it; iterating it reads the rows
(:mod:`~xmodal.indexer.manifest.rows`) and makes one :class:`ManifestEntry` per non-empty media value,
recording a problem for a row that gives none. :func:`read_manifest` is the function form.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from xmodal.indexer.manifest.entry import ManifestEntry
from xmodal.indexer.manifest.files import _detect_format
from xmodal.indexer.manifest.report import ManifestError, ReadReport, _show
from xmodal.indexer.manifest.rows import _RowReader
from xmodal.indexer.manifest.values import (
    _OMIT,
    COLUMN_TYPES,
    ID_COLUMN,
    WELL_KNOWN_TYPES,
    ColumnType,
    _column_name,
    _media_text,
    _media_uri,
    _metadata_value,
    _RowError,
    _source_id,
)
from xmodal.spaces import MODALITIES as _MODALITIES

MODALITIES: frozenset[str] = frozenset(_MODALITIES)  # what a --media column may be (the spaces table's)
DEFAULT_MEDIA: Mapping[str, str | None] = {"uri": None}
#: ``--lexical *``: every string column gives words (the default)
ALL_WORDS = "*"
#: a text media value up to this long is also one of the row's fields (every item of the row carries it)
ROW_TEXT_MAX_CHARS = 256


class ManifestReader(_RowReader):
    """Iterate the entries of a manifest; :attr:`report` holds the per-row problems.

    ``media`` maps media column -> modality (``None``: from the URI's extension, later); it replaces
    the default ``{"uri": None}``. A ``"text"`` column holds the text itself, any other a URI; a text of at
    most :data:`ROW_TEXT_MAX_CHARS` characters (a title, a name) is also one of the row's metadata fields, so
    every item of the row carries it (a longer one, a description, stays its text item's own).
    ``column_types`` declares a metadata column's type (over :data:`WELL_KNOWN_TYPES`);
    ``list_columns`` is short for ``column_types[c] = "list"``. Undeclared CSV cells are typed one
    by one (``"7"`` int, ``"12.50"`` float, ``"true"`` bool, ``"007"`` and integers beyond 2**53
    text): declare a column ``"str"`` when its values must keep one type (ZIP codes, SKUs).
    JSONL and Parquet values keep the types they have. Column names are matched and stored
    stripped and lower-cased; columns with an empty name are ignored.

    The file is opened and its header checked by the constructor; iterating reads it again from
    the start (each pass resets :attr:`report`). Memory grows with the number of ids (to find
    duplicates), never with the file.
    """

    def __init__(self, path: Path | str, *, media: Mapping[str, str | None] | None = None,
                 list_columns: Collection[str] = frozenset(),
                 column_types: Mapping[str, str] | None = None, progress: bool = False) -> None:
        self.path = Path(path)
        self._name = str(path)
        self.format, self.compressed = _detect_format(self.path, self._name)
        self.media = self._check_media(DEFAULT_MEDIA if media is None else media)
        self.column_types = self._check_types(list_columns, column_types or {})
        self.progress = progress
        self.base_dir = os.path.dirname(os.path.abspath(self.path))
        self.report = ReadReport()
        self._first_seen: dict[str, int] = {}  # id -> line (or row) of the row that gave its entries
        self._check_file()
        self.header: list[str] | None = None  # the checked column names (JSONL has none)
        if self.format in ("csv", "tsv"):
            with self._open_text() as (_, text):
                self.header = self._check_header(self._csv_header(self._csv_reader(text)), what="header")
        elif self.format == "parquet":
            self.header = self._check_header(self._parquet_names(), what="schema")

    # --- arguments and file -----------------------------------------------------------------

    def _check_media(self, media: Mapping[str, str | None]) -> dict[str, str | None]:
        if not media:
            raise ManifestError("no media columns given", path=self._name)
        out: dict[str, str | None] = {}
        for raw_name, modality in media.items():
            name = _column_name(raw_name)
            if not name or name == ID_COLUMN:
                raise ManifestError(f"{raw_name!r} cannot be a media column", path=self._name)
            if modality is not None and modality not in MODALITIES:
                raise ManifestError(
                    f"media column {name!r}: unknown modality {modality!r} "
                    f"(one of {', '.join(sorted(MODALITIES))}, or None)", path=self._name)
            if name in out:
                raise ManifestError(f"media column {name!r} given twice", path=self._name)
            out[name] = modality
        return out

    def _check_types(self, list_columns: Collection[str], declared: Mapping[str, str]) -> dict[str, ColumnType]:
        if isinstance(list_columns, str):  # a common slip: list_columns="tags"
            list_columns = [list_columns]
        types: dict[str, ColumnType] = dict(WELL_KNOWN_TYPES)
        given: dict[str, str] = {**{c: "list" for c in list_columns}, **declared}
        for raw_name, kind in given.items():
            if kind not in COLUMN_TYPES:
                raise ManifestError(f"column {raw_name!r}: unknown type {kind!r} "
                                    f"(one of {', '.join(sorted(COLUMN_TYPES))})", path=self._name)
            types[_column_name(raw_name)] = cast(ColumnType, kind)
        return types

    def _check_file(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise ManifestError("no such file", path=self._name) from None
        except OSError as exc:
            raise ManifestError(f"cannot read: {exc.strerror or exc}", path=self._name) from None
        if stat.S_ISDIR(st.st_mode):
            raise ManifestError("is a folder, not a manifest file", path=self._name)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block open()
            raise ManifestError("not a regular file", path=self._name)
        if not os.access(self.path, os.R_OK):
            raise ManifestError("cannot read: permission denied", path=self._name)

    # --- lexical fields -------------------------------------------------------------------------

    def word_columns(self) -> list[str]:
        """The columns that can give a product's words: metadata columns and text media columns (``id`` is
        always in the words). CSV, TSV, Parquet: from the header; JSONL: the keys of its lines (one pass)."""
        names = self.header
        if names is None:
            names = []
            seen: set[str] = set()
            for _, _, values, _ in self._jsonl_rows():
                for key in values:
                    name = _column_name(key)
                    if name not in seen:
                        seen.add(name)
                        names.append(name)
            self.report = ReadReport()
        return sorted({n for n in names if n and n != ID_COLUMN and self.media.get(n, "text") == "text"})

    def lexical_fields(self, names: Collection[str]) -> list[str] | None:
        """The columns ``--lexical`` chose, checked against :meth:`word_columns` (``*``: every string column,
        the default: None). An unknown name raises :class:`ManifestError` naming the known ones."""
        wanted = list(dict.fromkeys(_column_name(n) for n in names if _column_name(n)))
        if not wanted:
            raise ManifestError("--lexical names no column (give COL,COL,... or * for every string column)",
                                path=self._name)
        if ALL_WORDS in wanted:
            if len(wanted) > 1:
                raise ManifestError(f"--lexical {ALL_WORDS} stands alone (every string column)", path=self._name)
            return None
        known = self.word_columns()
        unknown = [n for n in wanted if n != ID_COLUMN and n not in known]
        if unknown:
            raise ManifestError(
                f"--lexical: no column {_show(unknown)} that gives words; known columns: "
                f"{_show(known) if known else 'none'} (the id is always in)", path=self._name)
        return [n for n in wanted if n != ID_COLUMN]

    # --- iteration ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[ManifestEntry]:
        self.report = report = ReadReport()
        self._first_seen = {}
        rows = {"csv": self._csv_rows, "tsv": self._csv_rows, "jsonl": self._jsonl_rows,
                "parquet": self._parquet_rows}[self.format]
        for row, line, values, typed in rows():
            yield from self._entries(values, row=row, line=line, typed=typed)
        self._first_seen = {}
        report.complete = True

    def _entries(self, values: Mapping[str, Any], *, row: int, line: int | None,
                 typed: bool) -> list[ManifestEntry]:
        """The entries of one row, or none and a problem."""
        try:
            source_id = _source_id(values.get(ID_COLUMN))
        except _RowError as exc:
            self._problem(row, line, None, str(exc))
            return []
        where = "line" if line is not None else "row"
        first = self._first_seen.get(source_id)
        if first is not None:
            self._problem(row, line, source_id, f"duplicate id {source_id!r} (first on {where} {first}): row skipped")
            return []
        media: list[tuple[str, str | None, str | None, str | None]] = []
        try:
            for column, modality in self.media.items():
                value = values.get(column)
                if modality == "text":
                    text = _media_text(column, value)
                    if text is not None:
                        media.append((column, modality, None, text))
                else:
                    uri = _media_uri(column, value, self.base_dir)
                    if uri is not None:
                        media.append((column, modality, uri, None))
        except _RowError as exc:
            self._problem(row, line, source_id, f"id {source_id!r}: {exc}: row skipped")
            return []
        if not media:
            self._problem(row, line, source_id,
                          f"id {source_id!r}: no media value ({_show(list(self.media))} empty): row skipped")
            return []

        metadata: dict[str, Any] = {}
        for column, value in values.items():
            if column == ID_COLUMN or column in self.media:
                continue
            try:
                converted = _metadata_value(value, self.column_types.get(column), typed=typed)
            except _RowError as exc:
                self._problem(row, line, source_id, f"id {source_id!r}: {column}: {exc}: field dropped",
                              skipped=False)
                continue
            if converted is not _OMIT:
                metadata[column] = converted
        for column, _, _, text in media:  # a title is the row's: its images carry it too (and filter by it)
            if text is not None and len(text) <= ROW_TEXT_MAX_CHARS:
                metadata[column] = text

        self._first_seen[source_id] = line if line is not None else row
        self.report.entries += len(media)
        return [ManifestEntry(source_id, column, modality, uri, text, metadata, row, line)
                for column, modality, uri, text in media]


def read_manifest(path: Path | str, *, media: Mapping[str, str | None] | None = None,
                  list_columns: Collection[str] = frozenset(), column_types: Mapping[str, str] | None = None,
                  progress: bool = False) -> ManifestReader:
    """A :class:`ManifestReader` (iterate it for the entries; read ``.report`` afterwards).

    Raises :class:`ManifestError` at once for problems that make the whole manifest unusable.
    """
    return ManifestReader(path, media=media, list_columns=list_columns, column_types=column_types,
                          progress=progress)
