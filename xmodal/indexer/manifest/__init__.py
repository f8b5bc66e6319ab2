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

The modules, in the order a manifest passes through them:

- ``files``: the format from the extension; binary and text streams over the file, gunzipped;
- ``rows``: the CSV/TSV, JSONL and Parquet row readers, the header check, per-row problems, the
  line and problem limits;
- ``values``: a row's id, media values and typed metadata (column types, CSV typing);
- ``reader``: :class:`ManifestReader` (arguments, file and header checks, rows to entries) and
  :func:`read_manifest`;
- ``entry``: :class:`ManifestEntry`, its key (made in :mod:`xmodal.storage.uris`) and digests;
- ``report``: :class:`ManifestError`, :class:`ManifestProblem`, :class:`ReadReport`;
- ``diff``: :class:`ManifestDiffer` and :func:`diff_entries` against the catalog's digests.

Every public name is importable from this package, as it was from the single module it replaces.
"""

from xmodal.indexer.manifest.diff import Change, ManifestDiff, ManifestDiffer, Removals, diff_entries
from xmodal.indexer.manifest.entry import ManifestEntry, split_digest
from xmodal.indexer.manifest.reader import DEFAULT_MEDIA, MODALITIES, ManifestReader, read_manifest
from xmodal.indexer.manifest.report import ManifestError, ManifestProblem, ReadReport
from xmodal.indexer.manifest.rows import MAX_LINE_CHARS, MAX_PROBLEMS_KEPT
from xmodal.indexer.manifest.values import COLUMN_TYPES, ID_COLUMN, WELL_KNOWN_TYPES, ColumnType
from xmodal.storage.uris import KEY_PREFIX, entry_key, parse_key

__all__ = [
    "COLUMN_TYPES",
    "DEFAULT_MEDIA",
    "ID_COLUMN",
    "KEY_PREFIX",
    "MAX_LINE_CHARS",
    "MAX_PROBLEMS_KEPT",
    "MODALITIES",
    "WELL_KNOWN_TYPES",
    "Change",
    "ColumnType",
    "ManifestDiff",
    "ManifestDiffer",
    "ManifestEntry",
    "ManifestError",
    "ManifestProblem",
    "ManifestReader",
    "ReadReport",
    "Removals",
    "diff_entries",
    "entry_key",
    "parse_key",
    "read_manifest",
    "split_digest",
]
