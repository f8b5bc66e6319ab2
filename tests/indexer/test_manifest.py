"""Manifests: every format and its awkward corners, typed metadata, fatal vs per-row errors, diffs."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xmodal.errors import UserError
from xmodal.indexer.manifest import (
    ManifestDiffer,
    ManifestEntry,
    ManifestError,
    ManifestReader,
    diff_entries,
    entry_key,
    parse_key,
    read_manifest,
    split_digest,
)
from xmodal.indexer.manifest import rows as manifest_module  # the line and problem limits, patched below

PRODUCTS: list[dict[str, Any]] = [
    {"id": "sku-001", "uri": "img/1.jpg", "title": "Blue mug, large", "category": "Home & Garden",
     "price": 12.5, "brand": "3M", "tags": ["kitchen", "blue"], "stock": 7, "active": True, "zip": "01067"},
    {"id": "商品-2", "uri": "https://cdn.example.com/p/2.png?w=200", "title": "1984",
     "category": "Bücher", "price": 12.0, "brand": "Gallimard", "tags": ["novel"], "stock": 0,
     "active": False, "zip": "75001"},
    {"id": "3", "uri": "s3://bucket/items/3.webp", "title": "Line one\nline two", "category": None,
     "price": None, "brand": None, "tags": None, "stock": None, "active": None, "zip": None},
]
FORMATS = ["csv", "csv.gz", "tsv", "jsonl", "ndjson", "jsonl.gz", "parquet"]


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` the way the format's usual tools do (lists as "a|b" in CSV, nulls as empty cells)."""
    name = path.name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
        return path
    if ".csv" in name or ".tsv" in name:
        out = io.StringIO(newline="")
        fields = list(rows[0])
        writer = csv.writer(out, delimiter="\t" if ".tsv" in name else ",", lineterminator="\r\n")
        writer.writerow(fields)
        for row in rows:
            writer.writerow([_csv_cell(row.get(f)) for f in fields])
        data = out.getvalue().encode("utf-8")
    else:
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "|".join(value)
    return str(value)


def read_all(path: Path, **kwargs: Any) -> tuple[list[ManifestEntry], ManifestReader]:
    reader = read_manifest(path, **kwargs)
    return list(reader), reader


def messages(reader: ManifestReader) -> list[str]:
    return [str(p) for p in reader.report.problems]


# --- formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_typed_entries(tmp_path: Path, fmt: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_manifest(tmp_path / f"products.{fmt}", PRODUCTS)
    monkeypatch.chdir("/")  # relative paths are resolved against the manifest, not the working folder
    entries, reader = read_all(path)

    assert reader.report.problems == []
    assert reader.report.complete and reader.report.rows == 3 and reader.report.entries == 3
    assert [e.source_id for e in entries] == ["sku-001", "商品-2", "3"]
    first, second, third = entries
    assert first.uri == str(tmp_path / "img" / "1.jpg")
    assert second.uri == "https://cdn.example.com/p/2.png?w=200"
    assert third.uri == "s3://bucket/items/3.webp"
    assert {e.column for e in entries} == {"uri"} and {e.modality for e in entries} == {None}
    assert first.metadata == {"title": "Blue mug, large", "category": "Home & Garden", "price": 12.5,
                              "brand": "3M", "tags": ["kitchen", "blue"], "stock": 7, "active": True,
                              "zip": "01067"}
    # title "1984" stays text and price 12 a float (well-known types); stock 0 and active false are kept
    assert second.metadata == {"title": "1984", "category": "Bücher", "price": 12.0, "brand": "Gallimard",
                               "tags": ["novel"], "stock": 0, "active": False, "zip": "75001" if fmt not in
                               ("csv", "csv.gz", "tsv") else 75001}
    assert type(second.metadata["price"]) is float and type(first.metadata["stock"]) is int
    assert third.metadata == {"title": "Line one\nline two"}  # empty cells and nulls are left out


def test_digests_agree_across_formats(tmp_path: Path) -> None:
    rows = [{k: v for k, v in p.items() if k != "zip"} for p in PRODUCTS]  # zip is typed by value in CSV
    digests = set()
    for fmt in FORMATS:
        folder = tmp_path / fmt.replace(".", "_")
        folder.mkdir()
        entries, _ = read_all(write_manifest(folder / f"m.{fmt}", rows))
        digests.add(tuple(e.metadata_digest for e in entries))
    assert len(digests) == 1  # the same catalog exported another way is no metadata change


def test_csv_awkward_bytes_and_line_numbers(tmp_path: Path) -> None:
    data = (
        "\ufeff ID ,  URI ,Title,Notes\r\n"
        '1,a.jpg,"comma, inside","two\r\nlines"\r\n'
        "\r\n"
        '2,b.jpg,"quote "" inside","three\nphysical\nlines"\r\n'
        "3,c.jpg,Ünïcödé ✓,x\r\n"
        ",d.jpg,empty id,x\r\n"
        "  ,,,\r\n"
        "5,e.jpg,last,x"  # no newline at the end
    ).encode("utf-8")
    path = tmp_path / "m.csv"
    path.write_bytes(data)
    entries, reader = read_all(path)
    assert [(e.source_id, e.line, e.row) for e in entries] == [("1", 2, 1), ("2", 5, 2), ("3", 8, 3),
                                                               ("5", 11, 5)]
    assert entries[0].metadata == {"title": "comma, inside", "notes": "two\r\nlines"}
    assert entries[1].metadata["title"] == 'quote " inside'
    assert entries[2].metadata["title"] == "Ünïcödé ✓"
    assert messages(reader) == [f"{path}:9: empty id: row skipped"]  # line 10, all empty, is no row


def test_tsv_and_gzip_tsv(tmp_path: Path) -> None:
    (tmp_path / "m.tsv").write_text("id\turi\tnote\nA\ta.jpg\tx, y\n", encoding="utf-8")
    (tmp_path / "m.tsv.gz").write_bytes(gzip.compress(b"id\turi\tnote\nA\ta.jpg\tx, y\n"))
    for name in ("m.tsv", "m.tsv.gz"):
        (entry,), _ = read_all(tmp_path / name)
        assert entry.source_id == "A" and entry.metadata == {"note": "x, y"}


def test_csv_values_are_typed_one_by_one(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "id,uri,a,b,c,d,e,f,g,h,i,j\n"
        "x,p.jpg,7,-3,12.50,0.5,007,+4930123,9007199254740993,TRUE,yes,2E10\n",
        encoding="utf-8",
    )
    (entry,), _ = read_all(path)
    assert entry.metadata == {"a": 7, "b": -3, "c": 12.5, "d": 0.5, "e": "007", "f": "+4930123",
                              "g": "9007199254740993", "h": True, "i": "yes", "j": "2E10"}


def test_declared_types_and_lists(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "id,uri,zip,qty,flag,colors,tags,price\n"
        "1,a.jpg,10115,3,yes,red; green ;,a|b| |c,9\n"
        "2,b.jpg,01067,x,maybe,blue,solo,N/A\n",
        encoding="utf-8",
    )
    entries, reader = read_all(path, list_columns={"colors"},
                               column_types={"ZIP": "str", "qty": "int", "flag": "bool"})
    assert entries[0].metadata == {"zip": "10115", "qty": 3, "flag": True, "colors": ["red", "green"],
                                   "tags": ["a", "b", "c"], "price": 9.0}
    # a value that cannot take its type drops that field only; the row is still read
    assert entries[1].metadata == {"zip": "01067", "colors": ["blue"], "tags": ["solo"]}
    problems = reader.report.problems
    assert [p.skipped for p in problems] == [False, False, False]
    assert [p.message for p in problems] == [
        "id '2': qty: 'x' is not an integer: field dropped",
        "id '2': flag: 'maybe' is not a boolean: field dropped",
        "id '2': price: 'N/A' is not a number: field dropped",
    ]
    assert reader.report.skipped_ids == set() and reader.report.unidentified_rows == 0


def test_jsonl_values_keep_their_types_and_declared_lists_split(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    rows = [{"id": 10, "uri": "a.jpg", "tags": "x;y", "dims": {"w": 1, "h": None}, "code": "12",
             "scores": [1, None, 2], "empty": [], "blank": "  "}]
    write_manifest(path, rows)
    (entry,), _ = read_all(path)
    assert entry.source_id == "10"
    assert entry.metadata == {"tags": ["x", "y"], "dims": {"w": 1, "h": None}, "code": "12", "scores": [1, 2]}


def test_parquet_arrow_types_become_json_values(tmp_path: Path) -> None:
    import datetime as dt
    import decimal

    table = pa.table({
        "ID": pa.array([1, 2], pa.int64()),
        " Uri ": ["a.jpg", "b.jpg"],
        "price": pa.array([decimal.Decimal("12.50"), None], pa.decimal128(10, 2)),
        "when": pa.array([dt.datetime(2024, 5, 1, 12, 30), None], pa.timestamp("us")),
        "day": pa.array([dt.date(2024, 5, 1), None]),
        "score": [float("nan"), 1.5],
        "label": pa.array(["a", "b"]).dictionary_encode(),
        "raw": pa.array([b"text", b"\xff\xfe"]),
    })
    path = tmp_path / "m.parquet"
    pq.write_table(table, path)
    entries, reader = read_all(path)
    assert entries[0].metadata == {"price": 12.5, "when": "2024-05-01T12:30:00", "day": "2024-05-01",
                                   "label": "a", "raw": "text"}
    assert entries[1].metadata == {"score": 1.5, "label": "b"}
    assert messages(reader) == [f"{path}: row 2: id '2': raw: binary value, not UTF-8 text: field dropped"]


def test_parquet_is_read_in_batches_across_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "_PARQUET_BATCH_ROWS", 3)
    n = 10
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(n)], "uri": [f"{i}.jpg" for i in range(n)]}),
                   tmp_path / "m.parquet", row_group_size=4)
    entries, reader = read_all(tmp_path / "m.parquet")
    assert [e.source_id for e in entries] == [f"p{i}" for i in range(n)]
    assert [e.row for e in entries] == list(range(1, n + 1)) and reader.report.rows == n


# --- media columns ------------------------------------------------------------------------------


def test_several_media_columns_give_one_entry_per_value(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "id,uri,image,title,brand\n"
        "p1,manual.pdf,front.jpg,Red chair,Acme\n"
        "p2,,side.jpg,,Acme\n"
        "p3,,,Just a title,\n",
        encoding="utf-8",
    )
    media = {"image": "image", "title": "text", "uri": None}
    entries, reader = read_all(path, media=media)
    assert [(e.source_id, e.column, e.modality) for e in entries] == [
        ("p1", "image", "image"), ("p1", "title", "text"), ("p1", "uri", None),
        ("p2", "image", "image"), ("p3", "title", "text"),
    ]
    text = entries[1]
    assert text.text == "Red chair" and text.uri is None
    assert entries[0].uri == str(tmp_path / "front.jpg") and entries[0].text is None
    # file media columns are not metadata; a short text (a title) is, and all are shared by the row's entries
    assert entries[0].metadata == entries[1].metadata == entries[2].metadata == {"brand": "Acme", "title": "Red chair"}
    assert entries[3].metadata == {"brand": "Acme"}
    assert entries[4].metadata == {"title": "Just a title"}
    assert len({e.key for e in entries}) == 5 and reader.report.entries == 5


def test_a_long_text_stays_its_own_items_and_a_short_one_is_the_rows_field(tmp_path: Path) -> None:
    from xmodal.indexer.manifest.reader import ROW_TEXT_MAX_CHARS

    long = "x" * (ROW_TEXT_MAX_CHARS + 1)
    path = tmp_path / "m.csv"
    path.write_text(f"id,image,title,description\np1,a.jpg,Red chair,{long}\n", encoding="utf-8")
    entries, _ = read_all(path, media={"image": "image", "title": "text", "description": "text"})
    assert [e.column for e in entries] == ["image", "title", "description"]
    assert all(e.metadata == {"title": "Red chair"} for e in entries)
    assert entries[2].text == long


def test_file_uris_and_paths_become_catalog_uris(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"id": "a", "uri": "file:///srv/media/a%20b.jpg"},
        {"id": "b", "uri": "FILE://localhost/srv/b.jpg"},
        {"id": "c", "uri": "../up/c.jpg"},
        {"id": "d", "uri": "/abs/./d.jpg"},
        {"id": "e", "uri": "file://otherhost/e.jpg"},
        {"id": "f", "uri": "gs://bucket/f.mp3"},
        {"id": "g", "uri": 42},
    ]
    (tmp_path / "sub").mkdir()
    path = write_manifest(tmp_path / "sub" / "m.jsonl", rows)
    entries, reader = read_all(path)
    assert {e.source_id: e.uri for e in entries} == {
        "a": "/srv/media/a b.jpg", "b": "/srv/b.jpg", "c": str(tmp_path / "up" / "c.jpg"),
        "d": "/abs/d.jpg", "f": "gs://bucket/f.mp3",
    }
    assert messages(reader) == [
        f"{path}:5: id 'e': uri: file URI 'file://otherhost/e.jpg' names a host; only local files are read: "
        "row skipped",
        f"{path}:7: id 'g': uri: expected a path or URI, found a number: row skipped",
    ]
    assert reader.report.skipped_ids == {"e", "g"}


# --- keys and digests ---------------------------------------------------------------------------


@pytest.mark.parametrize("source_id", ["plain", "a#b", "100%", "%23", "with space/slash", "商品#1%", "#"])
def test_keys_round_trip_for_any_id(source_id: str) -> None:
    key = entry_key(source_id, "image")
    assert key.startswith("manifest:")
    assert parse_key(key) == (source_id, "image")
    assert entry_key(source_id, "uri") != key


def test_keys_of_different_ids_never_collide() -> None:
    ids = ["a#b", "a%23b", "a", "a#", "a%", "a%25"]
    keys = {entry_key(i, c) for i in ids for c in ("uri", "b", "b#uri")}
    assert len(keys) == len(ids) * 3
    with pytest.raises(ValueError):
        parse_key("/not/a/key.jpg")


def test_digest_halves_tell_media_from_metadata_changes() -> None:
    base = ManifestEntry("p1", "uri", None, "https://x/1.jpg", None, {"price": 1.0, "tags": ["a"]})
    reordered = ManifestEntry("p1", "uri", None, "https://x/1.jpg", None, {"tags": ["a"], "price": 1.0})
    new_price = ManifestEntry("p1", "uri", None, "https://x/1.jpg", None, {"price": 2.0, "tags": ["a"]})
    new_uri = ManifestEntry("p1", "uri", None, "https://x/2.jpg", None, {"price": 1.0, "tags": ["a"]})
    as_text = ManifestEntry("p1", "uri", None, None, "https://x/1.jpg", {"price": 1.0, "tags": ["a"]})
    digest = base.content_digest()
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert reordered.content_digest() == digest
    assert split_digest(new_price.content_digest())[0] == split_digest(digest)[0]
    assert split_digest(new_price.content_digest())[1] != split_digest(digest)[1]
    assert split_digest(new_uri.content_digest()) == (new_uri.media_digest, split_digest(digest)[1])
    assert new_uri.media_digest != base.media_digest
    assert as_text.media_digest != base.media_digest  # inline text is not the same media as a URI


# --- fatal errors -------------------------------------------------------------------------------


def fatal(path: Path, **kwargs: Any) -> str:
    with pytest.raises(ManifestError) as info:
        list(read_manifest(path, **kwargs))
    assert isinstance(info.value, UserError)
    return str(info.value)


def test_missing_id_column_is_fatal_in_csv_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("sku,uri\n1,a.jpg\n", encoding="utf-8")
    assert fatal(tmp_path / "m.csv") == f"{tmp_path / 'm.csv'}: header has no 'id' column; columns: 'sku', 'uri'"
    pq.write_table(pa.table({"sku": ["1"], "uri": ["a.jpg"]}), tmp_path / "m.parquet")
    assert "schema has no 'id' column" in fatal(tmp_path / "m.parquet")
    (tmp_path / "semi.csv").write_text("id;uri\n1;a.jpg\n", encoding="utf-8")
    assert "separated by something other than commas" in fatal(tmp_path / "semi.csv")


def test_missing_media_column_and_clashing_names_are_fatal(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,image\n1,a.jpg\n", encoding="utf-8")
    assert "header has no media column 'uri'" in fatal(tmp_path / "m.csv")
    assert "no media column 'title'" in fatal(tmp_path / "m.csv", media={"image": "image", "title": "text"})
    (tmp_path / "twice.csv").write_text("id,uri,Brand, brand\n1,a.jpg,x,y\n", encoding="utf-8")
    assert "columns 'Brand' and ' brand' have the same name" in fatal(tmp_path / "twice.csv")


@pytest.mark.parametrize(("name", "expected"), [
    ("m.xlsx", "unknown manifest format (known extensions: .csv, .csv.gz, .jsonl, .jsonl.gz, .ndjson,"),
    ("m.parquet.gz", "a gzip-compressed Parquet file is not read"),
    ("m", "unknown manifest format"),
])
def test_unknown_formats_are_fatal(tmp_path: Path, name: str, expected: str) -> None:
    (tmp_path / name).write_text("id,uri\n", encoding="utf-8")
    assert fatal(tmp_path / name).startswith(f"{tmp_path / name}: {expected}")


def test_unreadable_files_are_fatal(tmp_path: Path) -> None:
    assert fatal(tmp_path / "missing.csv").endswith("missing.csv: no such file")
    (tmp_path / "dir.csv").mkdir()
    assert fatal(tmp_path / "dir.csv").endswith("is a folder, not a manifest file")
    os.mkfifo(tmp_path / "pipe.csv")
    assert fatal(tmp_path / "pipe.csv").endswith("not a regular file")  # would block if opened
    (tmp_path / "empty.csv").write_bytes(b"")
    assert fatal(tmp_path / "empty.csv").endswith("empty manifest: no header line")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    assert "not a readable Parquet file" in fatal(tmp_path / "bad.parquet")
    (tmp_path / "bad.csv.gz").write_bytes(b"id,uri\n1,a.jpg\n")
    assert "bad gzip data" in fatal(tmp_path / "bad.csv.gz")


def test_bad_arguments_are_fatal(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m.csv", PRODUCTS)
    assert "unknown modality 'hologram'" in fatal(path, media={"uri": "hologram"})
    assert "'ID' cannot be a media column" in fatal(path, media={"ID": None})
    assert "no media columns given" in fatal(path, media={})
    assert "unknown type 'date'" in fatal(path, column_types={"when": "date"})


def test_truncated_gzip_fails_loudly_after_the_rows_before_it(tmp_path: Path) -> None:
    rows = [{"id": str(i), "uri": f"{i}.jpg", "pad": "x" * 200} for i in range(2000)]
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    path = tmp_path / "m.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    reader = read_manifest(path)
    seen: list[str] = []
    with pytest.raises(ManifestError, match="compressed file ends early") as info:
        for entry in reader:
            seen.append(entry.source_id)
    assert info.value.line == len(seen) + 1 and str(info.value).startswith(f"{path}:{len(seen) + 1}: ")
    assert 0 < len(seen) < 2000 and seen == [str(i) for i in range(len(seen))]
    assert reader.report.complete is False


def test_jsonl_without_any_id_is_fatal(tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.jsonl", [{"sku": "1", "uri": "a.jpg"}, {"sku": "2", "uri": "b.jpg"}])
    assert fatal(tmp_path / "m.jsonl").endswith("no line has an 'id' key (checked 2 lines)")


def test_csv_line_over_the_limit_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "MAX_LINE_CHARS", 64)
    (tmp_path / "m.csv").write_text("id,uri\n1,a.jpg\n2," + "x" * 100 + "\n", encoding="utf-8")
    assert fatal(tmp_path / "m.csv").endswith("m.csv:3: line longer than 16 MiB: is this a CSV manifest?")


# --- per-row problems ---------------------------------------------------------------------------


def test_broken_rows_are_reported_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(
        b"id,uri,title\n"
        b"1,a.jpg,ok\n"
        b"2,b.jpg\n"  # too few fields
        b"3,c.jpg,\xff bad utf-8\n"
        b"4,,no media\n"
        b"1,dup.jpg,again\n"
        b'5,e.jpg,"bad"quote\n'
        b"6,f.jpg,fine\n"
    )
    entries, reader = read_all(path)
    assert [e.source_id for e in entries] == ["1", "6"]
    assert entries[0].uri == str(tmp_path / "a.jpg")  # the duplicate did not replace the first row
    assert messages(reader) == [
        f"{path}:3: expected 3 fields, found 2: row skipped",
        f"{path}:4: not valid UTF-8 (byte 0xff): row skipped",
        f"{path}:5: id '4': no media value ('uri' empty): row skipped",
        f"{path}:6: duplicate id '1' (first on line 2): row skipped",
        f"{path}:7: malformed CSV: ',' expected after '\"': row skipped",
    ]
    report = reader.report
    assert report.rows == 7 and report.problem_count == 5 and report.complete
    assert report.skipped_ids == {"1", "2", "3", "4"}  # the id cell of a short or non-UTF-8 row is read
    assert report.unidentified_rows == 1


def test_broken_jsonl_lines_are_reported_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(
        b'{"id": "a", "uri": "a.jpg"}\r\n'
        b"{not json\n"
        b"\n"
        b"[1, 2]\n"
        b'{"id": "", "uri": "x.jpg"}\n'
        b'{"id": true, "uri": "x.jpg"}\n'
        b'{"id": "n", "uri": "x.jpg", "v": NaN}\n'
        b'{"id": "s", "uri": "\\udc80.jpg"}\n'
        b'{"id": "k", "ID": "k2", "uri": "x.jpg"}\n'
        b'{"id": "\xff", "uri": "x.jpg"}\n'
        b'{"id": "z", "uri": "z.jpg"}'
    )
    entries, reader = read_all(path)
    assert [e.source_id for e in entries] == ["a", "z"]
    assert [e.line for e in entries] == [1, 11]
    assert messages(reader) == [
        f"{path}:2: bad JSON: Expecting property name enclosed in double quotes at column 2: row skipped",
        f"{path}:4: not a JSON object but a list: row skipped",
        f"{path}:5: empty id: row skipped",
        f"{path}:6: id True is a boolean, not text or an integer: row skipped",
        f"{path}:7: bad JSON: NaN is not valid JSON: row skipped",
        f"{path}:8: a string holds a lone UTF-16 surrogate: row skipped",
        f"{path}:9: keys 'id' and 'ID' have the same name (names are compared stripped and lower-cased): "
        "row skipped",
        f"{path}:10: not valid UTF-8 (byte 0xff): row skipped",
    ]
    assert reader.report.skipped_ids == {"s", "k"} and reader.report.unidentified_rows == 6


def test_overlong_jsonl_line_is_skipped_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "MAX_LINE_CHARS", 64)
    path = tmp_path / "m.jsonl"
    long_line = json.dumps({"id": "big", "uri": "b.jpg", "pad": "x" * 300})
    path.write_text(f'{{"id": "1", "uri": "a.jpg"}}\n{long_line}\n{{"id": "2", "uri": "c.jpg"}}\n', encoding="utf-8")
    entries, reader = read_all(path)
    assert [(e.source_id, e.line) for e in entries] == [("1", 1), ("2", 3)]
    assert messages(reader) == [f"{path}:2: line longer than 16 MiB: row skipped"]


def test_problems_kept_are_capped_but_all_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "MAX_PROBLEMS_KEPT", 3)
    path = tmp_path / "m.csv"
    path.write_text("id,uri\n" + "".join(f"{i},\n" for i in range(10)) + "ok,a.jpg\n", encoding="utf-8")
    entries, reader = read_all(path)
    assert [e.source_id for e in entries] == ["ok"]
    assert len(reader.report.problems) == 3 and reader.report.problem_count == 10
    assert reader.report.skipped_ids == {str(i) for i in range(10)}  # every id is kept for the diff


def test_each_pass_starts_a_new_report(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,uri\n1,a.jpg\n,b.jpg\n", encoding="utf-8")
    reader = read_manifest(path)
    first = list(reader)
    report = reader.report
    second = list(reader)
    assert first == second and len(first) == 1  # a second pass is no "duplicate id"
    assert reader.report is not report and reader.report.problem_count == 1 == report.problem_count


def test_progress_bar_reports_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_manifest(tmp_path / "m.csv", PRODUCTS)
    assert len(list(read_manifest(path, progress=True))) == 3
    assert "m.csv" in capsys.readouterr().err
    list(read_manifest(path))
    assert capsys.readouterr().err == ""


# --- streaming ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl.gz"])
def test_reading_streams_instead_of_loading_the_file(tmp_path: Path, fmt: str) -> None:
    n, pad = 4000, "d" * 4000  # ~16 MB of rows
    path = write_manifest(tmp_path / f"m.{fmt}", [{"id": f"p{i}", "uri": f"{i}.jpg", "desc": pad}
                                                   for i in range(n)])
    tracemalloc.start()
    try:
        count = 0
        for entry in read_manifest(path):
            count += 1
            assert entry.metadata["desc"] == pad
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while reading a {n * len(pad)} byte manifest"


# --- diffs --------------------------------------------------------------------------------------


def entry(source_id: str, uri: str, **metadata: Any) -> ManifestEntry:
    return ManifestEntry(source_id, "uri", None, uri, None, metadata)


def test_diff_sorts_entries_into_changes() -> None:
    before = [entry("same", "s.jpg", p=1), entry("meta", "m.jpg", p=1), entry("media", "a.jpg", p=1),
              entry("gone", "g.jpg")]
    old = {e.key: e.content_digest() for e in before}
    after = [entry("same", "s.jpg", p=1), entry("meta", "m.jpg", p=2), entry("media", "b.jpg", p=1),
             entry("new", "n.jpg")]
    diff = diff_entries(old, after)
    assert [e.source_id for e in diff.inserts] == ["new"]
    assert [e.source_id for e in diff.updates] == ["media"]
    assert [e.source_id for e in diff.metadata_updates] == ["meta"]
    assert diff.unchanged == 1
    assert diff.deletes == [entry_key("gone", "uri")] and diff.kept == [] and diff.held == []


def test_diff_treats_an_unknown_digest_as_a_media_change() -> None:
    e = entry("x", "x.jpg")
    assert diff_entries({e.key: "legacy-sha1"}, [e]).updates == [e]
    assert diff_entries({e.key: "0" * 64}, [e]).updates == [e]


def test_diff_keeps_skipped_rows_and_holds_deletes_when_a_row_has_no_id(tmp_path: Path) -> None:
    old = {entry_key(i, "uri"): "0" * 64 for i in ("a", "b", "c", "gone")}
    path = tmp_path / "m.csv"
    path.write_text("id,uri\na,a.jpg\nb,\nc,c.jpg\n", encoding="utf-8")
    diff = diff_entries(old, read_manifest(path))
    assert diff.kept == [entry_key("b", "uri")]  # its row had no media: not a reason to delete it
    assert diff.deletes == [entry_key("gone", "uri")] and diff.held == []

    path.write_bytes(b"id,uri\na,a.jpg\nb,\nc,c.jpg\n\xff,x.jpg\n")
    diff = diff_entries(old, read_manifest(path))
    assert diff.deletes == [] and diff.held == [entry_key("gone", "uri")] and diff.kept == [entry_key("b", "uri")]


def test_streaming_differ_holds_deletes_of_an_unfinished_pass(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,uri\na,a.jpg\nb,b.jpg\n", encoding="utf-8")
    old = {entry_key("a", "uri"): "0" * 64, entry_key("b", "uri"): "0" * 64, entry_key("c", "uri"): "0" * 64}
    reader = read_manifest(path)
    differ = ManifestDiffer(old)
    for e in reader:
        assert differ.classify(e) == "update"
        break  # the caller stopped early (or the manifest failed half-way)
    removals = differ.finish(reader.report)
    assert removals.deletes == [] and sorted(removals.held) == [entry_key("b", "uri"), entry_key("c", "uri")]

    differ = ManifestDiffer(old)
    for e in reader:
        differ.classify(e)
    assert differ.finish(reader.report).deletes == [entry_key("c", "uri")]
    with pytest.raises(ValueError, match="given twice"):
        differ.classify(next(iter(reader)))
