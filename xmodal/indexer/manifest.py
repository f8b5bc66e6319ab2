"""Product and media manifests: CSV, TSV, JSONL or Parquet rows read as a stream of entries to index.

A manifest row is one thing in the source's own catalog (a product): an ``id`` (the source's key,
kept as text), one or more *media columns* and any other columns, kept as typed metadata. Each
non-empty media value becomes one :class:`ManifestEntry`, keyed by ``(id, column)``, so that a row
with an image and a title gives two entries that share the row's id and metadata.

**Fatal or per-row.** What makes the whole manifest unusable raises :class:`ManifestError` before
any entry is yielded (from :class:`ManifestReader`'s constructor): an unknown extension, a file
that cannot be opened, a header without ``id`` or without a media column asked for, two columns
whose names differ only in case or spaces. What breaks while the stream is read and cannot be
stepped over (a gzip stream cut short, an I/O error, a CSV line longer than 16 MiB, a corrupt
Parquet page) raises too, from the iteration, with the line or row; so does a JSONL file in which no
line has an ``id`` (JSONL has no header to check first). Everything else is a problem of
one row: the row is left out, a :class:`ManifestProblem` is recorded in
:attr:`ManifestReader.report`, and reading goes on, so one broken row never loses the rest. A value
that does not fit its declared type (``price`` of ``"N/A"``) drops that field only, and is recorded
as a problem that did not skip the row.

**Why deletes need the report.** A skipped row is absent from the stream, and the catalog must not
take its items for deleted: :func:`diff_entries` keeps the old entries of skipped ids, and holds
back every delete while any skipped row could not be identified (a bad JSON line, a malformed CSV
record), because its id is unknown.

CSV goes through Python's :mod:`csv` (C) rather than ``pyarrow.csv``: pyarrow reports no line
number for a bad row once quoted newlines are allowed (``InvalidRow.number`` is ``None``), and with
the per-row work done in Python either way the two parse at the same speed (500k rows: 0.30 s vs
0.36 s). Parquet is read by batches with pyarrow, JSONL line by line; no format is ever held whole.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import gzip
import hashlib
import io
import json
import math
import os
import re
import stat
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Literal, cast
from urllib.parse import unquote_to_bytes

from xmodal.errors import UserError
from xmodal.storage.uris import entry_key, parse_key, path_to_uri  # noqa: F401 - entry_key, parse_key re-exported

ColumnType = Literal["str", "int", "float", "bool", "list"]
Change = Literal["insert", "update", "metadata", "unchanged"]

MODALITIES: frozenset[str] = frozenset({"image", "audio", "text"})
COLUMN_TYPES: frozenset[str] = frozenset({"str", "int", "float", "bool", "list"})
ID_COLUMN = "id"
DEFAULT_MEDIA: Mapping[str, str | None] = {"uri": None}
# Columns whose type a product catalog implies: a title "1984" is text, a price "12" a float.
WELL_KNOWN_TYPES: Mapping[str, ColumnType] = {
    "title": "str",
    "category": "str",
    "brand": "str",
    "price": "float",
    "tags": "list",
}
MAX_LINE_CHARS = 16 * 1024 * 1024  # one CSV/JSONL line; longer is not a manifest line
MAX_PROBLEMS_KEPT = 1000  # problems beyond this are counted, not kept
_MAX_SAFE_INT = 2**53  # larger integers lose precision as JSON numbers in most readers: kept as text
_PARQUET_BATCH_ROWS = 4096
_PROGRESS_EVERY = 1024

_FORMATS: Mapping[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")  # no "+", no leading zeros: "+4930..." and "007" stay text
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")  # no exponent: "2E10" is a part number
_DECLARED_INT = re.compile(r"[+-]?[0-9]+")
_DECLARED_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_OMIT: Any = object()  # "no value": empty cell, null, NaN


class ManifestError(UserError):
    """The manifest cannot be read; the message names the file and, when known, the line or row."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 row: int | None = None) -> None:
        super().__init__(_located(message, path, line, row))
        self.path = path
        self.line = line
        self.row = row
        self.detail = message


@dataclass(frozen=True)
class ManifestProblem:
    """One row that could not be read whole.

    ``skipped``: the row gave no entries (otherwise only the field named in ``message`` was
    dropped). ``source_id`` is ``None`` when the row's id could not be read either.
    """

    path: str
    row: int  # 1-based among the data rows (header and blank lines not counted)
    line: int | None  # physical line where the row starts (CSV, JSONL); None for Parquet
    source_id: str | None
    message: str
    skipped: bool = True

    def __str__(self) -> str:
        return _located(self.message, self.path, self.line, self.row)


@dataclass
class ReadReport:
    """What one pass over a manifest left behind besides its entries (filled while iterating)."""

    rows: int = 0  # data rows seen, read or not
    entries: int = 0
    problems: list[ManifestProblem] = field(default_factory=list)  # the first MAX_PROBLEMS_KEPT
    problem_count: int = 0
    skipped_ids: set[str] = field(default_factory=set)  # ids of rows left out
    unidentified_rows: int = 0  # rows left out whose id is unknown
    complete: bool = False  # the whole file was read (set at the end of iteration)


@dataclass(frozen=True)
class ManifestEntry:
    """One media value of one manifest row.

    ``uri`` is set for file and URL media (a relative path is already resolved against the
    manifest's folder), ``text`` for inline text media. ``metadata`` is shared by the entries of a
    row: treat it as read-only.
    """

    source_id: str
    column: str
    modality: str | None  # "image" | "audio" | "text", or None: decided from the URI
    uri: str | None
    text: str | None
    metadata: dict[str, Any]
    row: int = field(default=0, compare=False)
    line: int | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """``manifest:<source_id>#<column>``, unique per (id, column); see :func:`entry_key`."""
        return entry_key(self.source_id, self.column)

    @cached_property
    def media_digest(self) -> str:
        """32 hex digits over what would have to be fetched and embedded again if it changed."""
        kind, value = ("text", self.text) if self.uri is None else ("uri", self.uri)
        return _digest([self.column, self.modality, kind, value])

    @cached_property
    def metadata_digest(self) -> str:
        """32 hex digits over the canonical JSON of the metadata."""
        return _digest(self.metadata)

    def content_digest(self) -> str:
        """Media digest + metadata digest: 64 hex digits, both halves sha256 (128 bits each).

        Two halves rather than one hash so that a caller storing only this string can tell a
        metadata-only change (update the catalog row, keep the vector) from a media change.
        """
        return self.media_digest + self.metadata_digest


def split_digest(digest: str) -> tuple[str, str]:
    """``(media_digest, metadata_digest)`` of a :meth:`ManifestEntry.content_digest`."""
    return digest[:32], digest[32:]


class ManifestReader:
    """Iterate the entries of a manifest; :attr:`report` holds the per-row problems.

    ``media`` maps media column -> modality (``None``: from the URI's extension, later); it replaces
    the default ``{"uri": None}``. A ``"text"`` column holds the text itself, any other a URI.
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
        if self.format in ("csv", "tsv"):
            with self._open_text() as (_, text):
                self._check_header(self._csv_header(self._csv_reader(text)), what="header")
        elif self.format == "parquet":
            self._check_header(self._parquet_names(), what="schema")

    # --- arguments and header ---------------------------------------------------------------

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

    def _check_header(self, raw_names: list[str], *, what: str) -> list[str]:
        names = [_column_name(n) for n in raw_names]
        first: dict[str, str] = {}
        for raw, name in zip(raw_names, names, strict=True):
            if not name:
                continue
            if name in first:
                raise ManifestError(f"{what}: columns {first[name]!r} and {raw!r} have the same name "
                                    "(names are compared stripped and lower-cased)", path=self._name)
            first[name] = raw
        if ID_COLUMN not in first:
            hint = ""
            if len(raw_names) == 1 and any(sep in raw_names[0] for sep in ";\t|"):
                hint = " (is it separated by something other than commas?)"
            raise ManifestError(f"{what} has no 'id' column{hint}; columns: {_show(raw_names)}", path=self._name)
        missing = [c for c in self.media if c not in first]
        if missing:
            raise ManifestError(f"{what} has no media column {_show(missing)}; columns: {_show(raw_names)}",
                                path=self._name)
        return names

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

        self._first_seen[source_id] = line if line is not None else row
        self.report.entries += len(media)
        return [ManifestEntry(source_id, column, modality, uri, text, metadata, row, line)
                for column, modality, uri, text in media]

    def _problem(self, row: int, line: int | None, source_id: str | None, message: str, *,
                 skipped: bool = True) -> None:
        report = self.report
        report.problem_count += 1
        if len(report.problems) < MAX_PROBLEMS_KEPT:
            report.problems.append(ManifestProblem(self._name, row, line, source_id, message, skipped))
        if skipped:
            if source_id is None:
                report.unidentified_rows += 1
            else:
                report.skipped_ids.add(source_id)

    # --- CSV / TSV ----------------------------------------------------------------------------

    def _csv_header(self, reader: Any) -> list[str]:
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise ManifestError(f"header: malformed CSV: {exc}", path=self._name, line=1) from None
        if not header or not any(h.strip() for h in header):
            raise ManifestError("empty manifest: no header line", path=self._name)
        if _has_surrogates(header):
            raise ManifestError("header is not valid UTF-8", path=self._name, line=1)
        return header

    def _csv_reader(self, text: IO[str]) -> Any:  # a csv reader (its type is private to _csv)
        delimiter = "\t" if self.format == "tsv" else ","
        return csv.reader(_bounded_lines(text, self._name), delimiter=delimiter, strict=True)

    def _csv_rows(self) -> Iterator[tuple[int, int | None, dict[str, Any], bool]]:
        _raise_csv_field_limit()
        with self._open_text() as (raw, text), self._progress_bar(os.fstat(raw.fileno()).st_size, "B") as bar:
            reader = self._csv_reader(text)
            names = self._check_header(self._csv_header(reader), what="header")
            columns = [(i, n) for i, n in enumerate(names) if n]
            id_index = names.index(ID_COLUMN)
            report = self.report
            last_line = reader.line_num
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    report.rows += 1
                    self._problem(report.rows, last_line + 1, None, f"malformed CSV: {exc}: row skipped")
                    last_line = reader.line_num
                    continue
                line, last_line = last_line + 1, reader.line_num
                if not any(f.strip() for f in fields):  # blank line or a row of empty cells
                    continue
                report.rows += 1
                if report.rows % _PROGRESS_EVERY == 0:
                    bar.update(raw.tell() - bar.n)
                if len(fields) != len(names):
                    self._problem(report.rows, line, _csv_id(fields, id_index),
                                  f"expected {len(names)} fields, found {len(fields)}: row skipped")
                    continue
                if _has_surrogates(fields):
                    self._problem(report.rows, line, _csv_id(fields, id_index),
                                  f"not valid UTF-8 ({_bad_byte(fields)}): row skipped")
                    continue
                yield report.rows, line, {n: fields[i] for i, n in columns}, False
            bar.update(raw.tell() - bar.n)

    # --- JSONL --------------------------------------------------------------------------------

    def _jsonl_rows(self) -> Iterator[tuple[int, int | None, dict[str, Any], bool]]:
        with self._open_binary() as (raw, stream), self._progress_bar(os.fstat(raw.fileno()).st_size, "B") as bar:
            report = self.report
            line = 0
            any_id = False
            while True:
                try:
                    chunk = stream.readline(MAX_LINE_CHARS + 1)
                except (OSError, EOFError, zlib.error) as exc:
                    raise _stream_error(exc, self._name, line=line + 1) from None
                if not chunk:
                    break
                line += 1
                if len(chunk) > MAX_LINE_CHARS and not chunk.endswith(b"\n"):
                    report.rows += 1
                    self._problem(report.rows, line, None, "line longer than 16 MiB: row skipped")
                    while chunk and not chunk.endswith(b"\n"):  # drop the rest of the line
                        chunk = stream.readline(MAX_LINE_CHARS)
                    continue
                if line == 1 and chunk.startswith(b"\xef\xbb\xbf"):
                    chunk = chunk[3:]
                if not chunk.strip():
                    continue
                report.rows += 1
                if report.rows % _PROGRESS_EVERY == 0:
                    bar.update(raw.tell() - bar.n)
                values = self._json_object(chunk, report.rows, line)
                if values is not None:
                    any_id = any_id or ID_COLUMN in values
                    yield report.rows, line, values, True
            bar.update(raw.tell() - bar.n)
        if report.rows and not any_id:
            raise ManifestError(f"no line has an 'id' key (checked {report.rows} lines)", path=self._name)

    def _json_object(self, chunk: bytes, row: int, line: int) -> dict[str, Any] | None:
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._problem(row, line, None, f"not valid UTF-8 (byte 0x{chunk[exc.start]:02x}): row skipped")
            return None
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            self._problem(row, line, None, f"bad JSON: {exc.msg} at column {exc.colno}: row skipped")
            return None
        except (ValueError, RecursionError) as exc:
            self._problem(row, line, None, f"bad JSON: {exc}: row skipped")
            return None
        if not isinstance(obj, dict):
            self._problem(row, line, None, f"not a JSON object but {_json_kind(obj)}: row skipped")
            return None
        if "\\u" in text and _has_lone_surrogate(obj):  # "\udc80" escapes decode to unencodable text
            self._problem(row, line, _try_source_id(obj), "a string holds a lone UTF-16 surrogate: row skipped")
            return None
        values: dict[str, Any] = {}
        raw_names: dict[str, str] = {}
        for raw_name, value in obj.items():
            name = _column_name(raw_name)
            if not name:
                continue
            if name in values:
                sid = _try_source_id(obj)
                self._problem(row, line, sid, f"keys {raw_names[name]!r} and {raw_name!r} have the same name "
                              "(names are compared stripped and lower-cased): row skipped")
                return None
            values[name] = value
            raw_names[name] = raw_name
        return values

    # --- Parquet ------------------------------------------------------------------------------

    def _parquet_names(self) -> list[str]:
        import pyarrow.parquet as pq

        try:
            with pq.ParquetFile(self.path) as pf:
                return list(pf.schema_arrow.names)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a file it can't read
            raise ManifestError(f"not a readable Parquet file: {_short(exc)}", path=self._name) from None

    def _parquet_rows(self) -> Iterator[tuple[int, int | None, dict[str, Any], bool]]:
        import pyarrow.parquet as pq

        report = self.report
        try:
            pf = pq.ParquetFile(self.path)
        except Exception as exc:
            raise ManifestError(f"not a readable Parquet file: {_short(exc)}", path=self._name) from None
        with pf, self._progress_bar(pf.metadata.num_rows, "row") as bar:
            names = self._check_header(list(pf.schema_arrow.names), what="schema")
            batches = pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, use_threads=False)
            while True:
                try:
                    batch = next(batches, None)
                    if batch is None:
                        break
                    columns = [(n, batch.column(i).to_pylist()) for i, n in enumerate(names) if n]
                except Exception as exc:
                    raise ManifestError(f"cannot read Parquet data after row {report.rows}: {_short(exc)}",
                                        path=self._name) from None
                for values in zip(*(c for _, c in columns), strict=True):
                    report.rows += 1
                    yield report.rows, None, {n: v for (n, _), v in zip(columns, values, strict=True)}, True
                bar.update(batch.num_rows)

    # --- files ----------------------------------------------------------------------------------

    def _open_binary(self) -> _Opened:
        return _Opened(self.path, self._name, self.compressed, text=False)

    def _open_text(self) -> _Opened:
        return _Opened(self.path, self._name, self.compressed, text=True)

    def _progress_bar(self, total: int, unit: str) -> Any:
        if not self.progress:
            return _NoBar()
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, unit_scale=True, desc=self.path.name)


def read_manifest(path: Path | str, *, media: Mapping[str, str | None] | None = None,
                  list_columns: Collection[str] = frozenset(), column_types: Mapping[str, str] | None = None,
                  progress: bool = False) -> ManifestReader:
    """A :class:`ManifestReader` (iterate it for the entries; read ``.report`` afterwards).

    Raises :class:`ManifestError` at once for problems that make the whole manifest unusable.
    """
    return ManifestReader(path, media=media, list_columns=list_columns, column_types=column_types,
                          progress=progress)


# --- diffing against the catalog ----------------------------------------------------------------


@dataclass
class ManifestDiff:
    """What changed between the catalog's entries (key -> digest) and a manifest."""

    inserts: list[ManifestEntry] = field(default_factory=list)
    updates: list[ManifestEntry] = field(default_factory=list)  # media changed: fetch and embed again
    metadata_updates: list[ManifestEntry] = field(default_factory=list)  # only metadata changed
    unchanged: int = 0
    deletes: list[str] = field(default_factory=list)  # keys gone from the manifest: safe to delete
    kept: list[str] = field(default_factory=list)  # keys of rows the reader skipped: leave as they are
    held: list[str] = field(default_factory=list)  # keys that look deleted, held back (see ManifestDiffer)


@dataclass(frozen=True)
class Removals:
    deletes: list[str]
    kept: list[str]
    held: list[str]


class ManifestDiffer:
    """Classify a manifest's entries one at a time against ``old`` (key -> content digest).

    For manifests too large to hold: the caller applies inserts and updates as they stream by and
    asks :meth:`finish` for the deletes only once the whole manifest was read (a manifest that
    fails half-way must delete nothing). Memory: the keys seen.
    """

    def __init__(self, old: Mapping[str, str]) -> None:
        self._old = old
        self._seen: set[str] = set()

    def classify(self, entry: ManifestEntry) -> Change:
        key = entry.key
        if key in self._seen:
            raise ValueError(f"entry {key!r} was given twice")
        self._seen.add(key)
        before = self._old.get(key)
        if before is None:
            return "insert"
        now = entry.content_digest()
        if before == now:
            return "unchanged"
        old_media, _ = split_digest(before)
        return "metadata" if len(before) == len(now) and old_media == entry.media_digest else "update"

    def finish(self, report: ReadReport | None = None) -> Removals:
        """The old keys not seen, split into deletes, kept (their row was skipped) and held.

        With a ``report`` of the pass that produced the entries: keys whose id was skipped are kept,
        and when any skipped row could not be identified every delete is held instead (the missing
        key could be on that row). A report of a pass that did not finish holds every delete.
        """
        deletes: list[str] = []
        kept: list[str] = []
        for key in self._old:
            if key in self._seen:
                continue
            if report is not None and report.skipped_ids:
                try:
                    source_id, _ = parse_key(key)
                except ValueError:
                    source_id = None
                if source_id in report.skipped_ids:
                    kept.append(key)
                    continue
            deletes.append(key)
        deletes.sort()
        kept.sort()
        if report is not None and (report.unidentified_rows or not report.complete):
            return Removals([], kept, deletes)
        return Removals(deletes, kept, [])


def diff_entries(old: Mapping[str, str], new: Iterable[ManifestEntry], *,
                 report: ReadReport | None = None) -> ManifestDiff:
    """Every change at once (see :class:`ManifestDiffer` for the streaming form).

    When ``new`` is a :class:`ManifestReader` its report is used after iterating it, unless
    ``report`` is given.
    """
    differ = ManifestDiffer(old)
    diff = ManifestDiff()
    lists = {"insert": diff.inserts, "update": diff.updates, "metadata": diff.metadata_updates}
    for entry in new:
        change = differ.classify(entry)
        if change == "unchanged":
            diff.unchanged += 1
        else:
            lists[change].append(entry)
    if report is None and isinstance(new, ManifestReader):
        report = new.report
    removals = differ.finish(report)
    diff.deletes, diff.kept, diff.held = removals.deletes, removals.kept, removals.held
    return diff


# --- values ---------------------------------------------------------------------------------------


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


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


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


# --- files and text -------------------------------------------------------------------------------


def _detect_format(path: Path, name: str) -> tuple[str, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes.pop()
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    known = ", ".join(sorted({*_FORMATS, *(f"{s}.gz" for s, f in _FORMATS.items() if f != "parquet")}))
    if fmt is None:
        raise ManifestError(f"unknown manifest format (known extensions: {known})", path=name)
    if fmt == "parquet" and compressed:
        raise ManifestError("a gzip-compressed Parquet file is not read: Parquet compresses inside the file",
                            path=name)
    return fmt, compressed


class _NoBar:
    """What the readers update when no progress bar was asked for."""

    n = 0

    def update(self, n: float) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Opened:
    """The raw file (for progress) and a binary or text stream over it, gunzipped when asked."""

    def __init__(self, path: Path, name: str, compressed: bool, *, text: bool) -> None:
        self._path, self._name, self._compressed, self._text = path, name, compressed, text
        self._stack = ExitStack()

    def __enter__(self) -> tuple[IO[bytes], Any]:
        try:
            raw: IO[bytes] = self._stack.enter_context(open(self._path, "rb"))
        except OSError as exc:
            raise ManifestError(f"cannot read: {exc.strerror or exc}", path=self._name) from None
        stream: IO[bytes] = raw
        if self._compressed:
            gz = gzip.GzipFile(fileobj=raw, mode="rb")
            self._stack.enter_context(gz)
            stream = cast(IO[bytes], gz)
        if not self._text:
            return raw, stream
        # newline="" as the csv module asks; bad UTF-8 becomes surrogates, found per row
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        self._stack.enter_context(text)
        return raw, text

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _bounded_lines(text: IO[str], name: str) -> Iterator[str]:
    """The lines of ``text``; a line over MAX_LINE_CHARS is an error rather than all the memory there is."""
    line_no = 0
    while True:
        try:
            line = text.readline(MAX_LINE_CHARS + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise _stream_error(exc, name, line=line_no + 1) from None
        if not line:
            return
        line_no += 1
        if len(line) > MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            raise ManifestError("line longer than 16 MiB: is this a CSV manifest?", path=name, line=line_no)
        yield line


def _stream_error(exc: BaseException, name: str, *, line: int) -> ManifestError:
    if isinstance(exc, EOFError):
        message = "compressed file ends early (truncated download?)"
    elif isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        message = f"bad gzip data: {exc}"
    elif isinstance(exc, OSError):
        message = f"read error: {exc.strerror or exc}"
    else:
        message = str(exc)
    return ManifestError(f"{message}; nothing after this point was read", path=name, line=line)


_csv_limit_raised = False


def _raise_csv_field_limit() -> None:
    """csv's default field limit (128 KiB) is below a long product description; the limit is per
    process, so it is only ever raised."""
    global _csv_limit_raised
    if not _csv_limit_raised:
        csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_CHARS))
        _csv_limit_raised = True


def _csv_id(fields: list[str], index: int) -> str | None:
    """The id of a CSV row that is skipped, when its id cell can be read: its old entries are then
    kept rather than every delete held back. The id is the first column in most manifests, where a
    stray field further on does not move it."""
    if index >= len(fields) or _has_surrogates([fields[index]]):
        return None
    return fields[index].strip() or None


def _has_surrogates(fields: list[str]) -> bool:
    try:
        "".join(fields).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _bad_byte(fields: list[str]) -> str:
    for text in fields:
        for ch in text:
            if "\udc80" <= ch <= "\udcff":
                return f"byte 0x{ord(ch) - 0xDC00:02x}"
    return "bad byte"


def _column_name(name: Any) -> str:
    return str(name).strip().lower()


def _show(names: Iterable[str]) -> str:
    shown = [repr(n) for n in names]
    return ", ".join(shown[:20]) + (f", ... ({len(shown)} in all)" if len(shown) > 20 else "")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _located(message: str, path: str | None, line: int | None, row: int | None) -> str:
    if path is None:
        return message
    if line is not None:
        return f"{path}:{line}: {message}"
    if row is not None:
        return f"{path}: row {row}: {message}"
    return f"{path}: {message}"
