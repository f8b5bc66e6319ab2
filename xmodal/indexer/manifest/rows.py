"""The three row readers: CSV/TSV, JSONL and Parquet, each streamed, giving ``(row, line, values, typed)``.

:class:`_RowReader` is the half of :class:`~xmodal.indexer.manifest.reader.ManifestReader` that reads
the file: it checks the header (or Parquet schema), yields one mapping of column -> cell per data row,
and records a :class:`ManifestProblem` for a row it has to leave out. ``typed`` is false for CSV, whose
cells are text to be typed later. The limits below are read when a pass runs (tests lower them).

CSV goes through Python's :mod:`csv` (C) rather than ``pyarrow.csv``: pyarrow reports no line
number for a bad row once quoted newlines are allowed (``InvalidRow.number`` is ``None``), and with
the per-row work done in Python either way the two parse at the same speed (500k rows: 0.30 s vs
0.36 s). Parquet is read by batches with pyarrow, JSONL line by line; no format is ever held whole.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from xmodal.indexer.manifest.files import _STREAM_ERRORS, _NoBar, _Opened, _stream_error
from xmodal.indexer.manifest.report import ManifestError, ManifestProblem, ReadReport, _show
from xmodal.indexer.manifest.values import ID_COLUMN, _column_name, _json_kind, _try_source_id

MAX_LINE_CHARS = 16 * 1024 * 1024  # one CSV/JSONL line; longer is not a manifest line
MAX_PROBLEMS_KEPT = 1000  # problems beyond this are counted, not kept
_PARQUET_BATCH_ROWS = 4096
_PROGRESS_EVERY = 1024


class _RowReader:
    """Reads a manifest file as rows; :class:`ManifestReader` sets these attributes and makes entries."""

    path: Path
    format: str  # "csv" | "tsv" | "jsonl" | "parquet"
    compressed: bool
    media: dict[str, str | None]  # checked media columns -> modality
    progress: bool
    report: ReadReport
    _name: str  # the path as given, for messages

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
                except _STREAM_ERRORS as exc:
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


def _bounded_lines(text: IO[str], name: str) -> Iterator[str]:
    """The lines of ``text``; a line over MAX_LINE_CHARS is an error rather than all the memory there is."""
    line_no = 0
    while True:
        try:
            line = text.readline(MAX_LINE_CHARS + 1)
        except _STREAM_ERRORS as exc:
            raise _stream_error(exc, name, line=line_no + 1) from None
        if not line:
            return
        line_no += 1
        if len(line) > MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            raise ManifestError("line longer than 16 MiB: is this a CSV manifest?", path=name, line=line_no)
        yield line


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


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
