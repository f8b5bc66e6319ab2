"""What reading a manifest reports: the fatal :class:`ManifestError`, the per-row :class:`ManifestProblem`
and the :class:`ReadReport` of one pass.

Messages name the place as ``path:line: message``, or ``path: row N: message`` where there is no line
(Parquet).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from xmodal.errors import UserError


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


def _show(names: Iterable[str]) -> str:
    shown = [repr(n) for n in names]
    return ", ".join(shown[:20]) + (f", ... ({len(shown)} in all)" if len(shown) > 20 else "")


def _located(message: str, path: str | None, line: int | None, row: int | None) -> str:
    if path is None:
        return message
    if line is not None:
        return f"{path}:{line}: {message}"
    if row is not None:
        return f"{path}: row {row}: {message}"
    return f"{path}: {message}"
