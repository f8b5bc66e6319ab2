"""Walking sources (links, loops, odd files, odd names) and catalog URIs of local files."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from xmodal.errors import UserError
from xmodal.indexer.scan import OUTSIDE, FileEntry, Scan, scan, under_roots
from xmodal.storage.uris import FILE_SCHEME, path_to_uri, uri_to_path


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging (opening a FIFO blocks until a writer comes)."""

    def fire(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"gave up after {seconds}s: something blocked")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def scanned(*sources: Path) -> list[FileEntry]:
    with deadline(10):
        return list(scan(list(sources)))


def paths(entries: list[FileEntry], root: Path) -> list[str]:
    return [os.path.relpath(e.path, root) for e in entries]


# walking --------------------------------------------------------------------------------------


def test_finds_supported_extensions_case_insensitively(tmp_path: Path) -> None:
    images = ["a.jpg", "b.JPEG", "c.Png", "d.webp", "e.GIF", "f.bmp", "g.tif", "h.TIFF", "sub/deep/i.JpG",
              ".hidden.png"]
    texts = ["notes.txt", "README.MD", "sub/j.Md"]
    videos = ["n.mp4", "q.MKV", "sub/r.webm"]
    ignored = ["k.pdf", "noext", "l.jpg.bak", "m.jpgx", "n.mp4.part", ".jpg", "o.text", "sub/p.heic"]
    for name in images + texts + videos + ignored:
        touch(tmp_path / name, b"12345")
    entries = scanned(tmp_path)
    by_path = {os.path.relpath(e.path, tmp_path): e for e in entries}
    assert set(by_path) == set(images + texts + videos)
    assert len(entries) == len(by_path)
    assert {by_path[n].modality for n in images} == {"image"}
    assert {by_path[n].modality for n in texts} == {"text"}
    assert {by_path[n].modality for n in videos} == {"video"}
    for rel, e in by_path.items():
        st = os.stat(tmp_path / rel)
        assert (e.size, e.mtime_ns, e.error) == (5, st.st_mtime_ns, None)
        assert e.uri == e.path == str(tmp_path / rel)  # plain absolute paths


def test_order_is_stable_and_sorted_per_folder(tmp_path: Path) -> None:
    for name in ["z/c.jpg", "b.jpg", "A.jpg", "m/x.txt", "m/a.txt", "a.jpg", "z/a.png"]:
        touch(tmp_path / name)
    first = scanned(tmp_path)
    assert paths(first, tmp_path) == ["A.jpg", "a.jpg", "b.jpg", "m/a.txt", "m/x.txt", "z/a.png", "z/c.jpg"]
    assert scanned(tmp_path) == first


def test_symlink_loop_ends_and_reports_each_file_once(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "sub" / "b.jpg")
    (tmp_path / "sub" / "up").symlink_to("..", target_is_directory=True)  # sub/up -> root: a loop
    (tmp_path / "self").symlink_to(".", target_is_directory=True)
    entries = scanned(tmp_path)
    assert paths(entries, tmp_path) == ["a.jpg", "sub/b.jpg"]


def test_two_links_to_one_folder_walk_it_once(tmp_path: Path) -> None:
    touch(tmp_path / "real" / "c.jpg")
    touch(tmp_path / "real" / "inner" / "d.png")
    (tmp_path / "link1").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "link2").symlink_to(tmp_path / "real", target_is_directory=True)
    entries = scanned(tmp_path)
    names = sorted(os.path.basename(e.path) for e in entries)
    assert names == ["c.jpg", "d.png"]
    assert {os.path.realpath(e.path) for e in entries} == {
        str((tmp_path / "real" / "c.jpg").resolve()), str((tmp_path / "real" / "inner" / "d.png").resolve())}
    assert len({e.uri for e in entries}) == 2


def test_links_out_of_the_source_are_refused_unless_allowed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside / "far.jpg", b"far away")
    touch(outside / "file.txt", b"hello")
    src = tmp_path / "src"
    src.mkdir()
    touch(src / "own.txt", b"mine")
    (src / "dir-link").symlink_to(outside, target_is_directory=True)
    (src / "file-link.txt").symlink_to(outside / "file.txt")
    (src / "inside-link.txt").symlink_to(src / "own.txt")  # a link that stays inside is followed
    found = Scan()
    entries = list(scan([src], found=found))
    assert paths(entries, src) == ["file-link.txt", "inside-link.txt", "own.txt"]
    by_name = {os.path.basename(e.path): e for e in entries}
    assert by_name["file-link.txt"].error == OUTSIDE and by_name["file-link.txt"].size is None
    assert by_name["inside-link.txt"].error is None and by_name["inside-link.txt"].size == 4
    assert found.refused == [str(src / "dir-link")] and found.roots == [(str(src.resolve()), "folder")]

    allowed = Scan()
    entries = list(scan([src], follow_external=True, found=allowed))
    assert paths(entries, src) == ["file-link.txt", "inside-link.txt", "own.txt", "dir-link/far.jpg",
                                   "dir-link/file.txt"]
    assert all(e.error is None for e in entries) and entries[0].size == 5
    assert allowed.refused == []
    assert allowed.roots == [(str(src.resolve()), "folder"), (str((outside / "file.txt").resolve()), "link"),
                             (str(outside.resolve()), "link")]


def test_fifo_and_dangling_link_are_reported_not_opened(tmp_path: Path) -> None:
    touch(tmp_path / "good.jpg")
    os.mkfifo(tmp_path / "x.jpg")
    (tmp_path / "y.png").symlink_to(tmp_path / "missing.png")
    entries = {os.path.basename(e.path): e for e in scanned(tmp_path)}  # a deadline: opening the FIFO hangs
    assert set(entries) == {"good.jpg", "x.jpg", "y.png"}
    assert entries["good.jpg"].error is None
    fifo, broken = entries["x.jpg"], entries["y.png"]
    assert fifo.error == "not a regular file" and (fifo.size, fifo.mtime_ns) == (None, None)
    assert broken.error == "broken symlink" and (broken.size, broken.mtime_ns) == (None, None)
    assert (fifo.modality, broken.modality) == ("image", "image")


def test_a_fifo_as_the_source_is_reported(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    [entry] = scanned(tmp_path / "pipe.jpg")
    assert entry.error == "not a regular file"


def test_a_folder_named_like_an_image_is_walked_not_reported(tmp_path: Path) -> None:
    touch(tmp_path / "x.jpg" / "inside.png")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "x.jpg", target_is_directory=True)
    entries = scanned(tmp_path)
    assert [os.path.basename(e.path) for e in entries] == ["inside.png"]
    assert entries[0].error is None


def test_single_file_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(tmp_path / "one.JPG", b"abc")
    monkeypatch.chdir(tmp_path)
    [entry] = scanned(Path("one.JPG"))  # a relative source gives an absolute URI
    assert entry.uri == entry.path == str(tmp_path / "one.JPG")
    assert (entry.modality, entry.size, entry.error) == ("image", 3, None)


def test_missing_source_is_an_error_before_any_entry(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    it = scan([tmp_path, tmp_path / "unmounted"])
    with pytest.raises(UserError, match="unmounted does not exist"):
        next(it)
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match="does not exist"):
        scanned(tmp_path / "dangling")


def test_non_media_file_source_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "report.pdf")
    with pytest.raises(UserError, match="not a folder nor a supported media file"):
        next(scan([tmp_path, tmp_path / "report.pdf"]))


def test_overlapping_sources_report_each_file_once(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "x.jpg")
    touch(tmp_path / "a" / "b" / "y.jpg")
    a, b = tmp_path / "a", tmp_path / "a" / "b"
    for sources in ([a, b], [b, a], [a, a], [b / "y.jpg", a], [a, b / "y.jpg", a / "x.jpg"]):
        entries = scanned(*sources)
        assert sorted(paths(entries, a)) == ["b/y.jpg", "x.jpg"], sources
    assert paths(scanned(b, a), a) == ["b/y.jpg", "x.jpg"]  # sources in the order given
    assert scanned(tmp_path / "a" / "b" / ".." / "b") == scanned(b)  # same URIs however named


# URIs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/photos/a.jpg", "/photos/café 日本 😀.jpg", "/p/100% real.jpg",
                                  "/p/new\nline.txt", "/p/file:/x.jpg"])
def test_utf8_names_stay_plain_paths(path: str) -> None:
    assert path_to_uri(path) == path
    assert uri_to_path(path) == path


@pytest.mark.parametrize("raw", [b"/t/caf\xe9.jpg", b"/t/50%\xff x.jpg", b"/t/\x80\x81/\xfe.png"])
def test_non_utf8_names_round_trip(raw: bytes) -> None:
    path = os.fsdecode(raw)  # surrogate-escaped
    uri = path_to_uri(path)
    assert uri.startswith(FILE_SCHEME)
    assert uri.isascii()  # storable as text anywhere
    assert uri_to_path(uri) == path
    assert os.fsencode(uri_to_path(uri)) == raw


def test_scan_gives_non_utf8_names_file_uris(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9.jpg"
    with open(raw, "wb") as fh:
        fh.write(b"1234")
    touch(tmp_path / "plain.jpg")
    entries = scanned(tmp_path)
    odd = next(e for e in entries if e.uri.startswith(FILE_SCHEME))
    assert odd.uri.endswith("/caf%E9.jpg")
    assert os.fsencode(odd.path) == raw
    assert uri_to_path(odd.uri) == odd.path
    assert (odd.size, odd.error) == (4, None)
    assert under_roots(odd.uri, [str(tmp_path)])
    assert [e.uri for e in entries if not e.uri.startswith(FILE_SCHEME)] == [str(tmp_path / "plain.jpg")]


def test_under_roots() -> None:
    assert under_roots("/a/b/c.jpg", ["/a/b"])
    assert under_roots("/a/b/c/d.jpg", ["/a/b/"])
    assert under_roots("/a/b", ["/a/b"])
    assert not under_roots("/a/bc/d.jpg", ["/a/b"])
    assert not under_roots("/a/bc", ["/a/b"])
    assert not under_roots("/a/c.jpg", ["/a/b"])
    assert not under_roots("/a/c.jpg", [])
    assert under_roots("/a/c.jpg", ["/x", "/a"])
    assert under_roots("/anything.jpg", ["/"])
    assert under_roots("/a/b/c.jpg", ["/a/x/../b"])  # roots named the way scan() normalises them
    odd = path_to_uri(os.fsdecode(b"/a/b/\xe9.jpg"))
    assert under_roots(odd, ["/a/b"]) and not under_roots(odd, ["/a/bc"])
    assert under_roots(path_to_uri(os.fsdecode(b"/a/\xe9/x.jpg")), [os.fsdecode(b"/a/\xe9")])
