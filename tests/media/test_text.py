"""decode_text and text_metadata: strict decoding with reasons, and the title/snippet summary."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from pathlib import Path

import pytest

from xmodal.errors import MediaError
from xmodal.media import MediaLimits, decode_text, read_file, text_metadata

LIMITS = MediaLimits(max_file_bytes=1 << 20, max_image_pixels=1, max_text_bytes=1 << 16)
SAMPLE = "Grüße, 世界! 😀\nsecond line"


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(MediaError) as info:
        call()
    return info.value.reason


# --- encodings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        SAMPLE.encode("utf-8"),
        SAMPLE.encode("utf-8-sig"),
        SAMPLE.encode("utf-16"),  # native order, with BOM
        codecs.BOM_UTF16_LE + SAMPLE.encode("utf-16-le"),
        codecs.BOM_UTF16_BE + SAMPLE.encode("utf-16-be"),
        codecs.BOM_UTF32_LE + SAMPLE.encode("utf-32-le"),
        codecs.BOM_UTF32_BE + SAMPLE.encode("utf-32-be"),
    ],
    ids=["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"],
)
def test_decodes_with_and_without_bom(data: bytes) -> None:
    assert decode_text(data, LIMITS) == SAMPLE


def test_read_and_decode_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_bytes(SAMPLE.encode("utf-8-sig"))
    assert decode_text(read_file(str(path), LIMITS), LIMITS) == SAMPLE


def test_latin1_is_refused_with_offset() -> None:
    data = "café au lait".encode("latin-1")
    assert reason_of(lambda: decode_text(data, LIMITS)) == "not valid UTF-8 text (byte 0xe9 at offset 3)"


def test_invalid_byte_offset_counts_the_bom() -> None:
    data = codecs.BOM_UTF8 + b"hello world\xff"
    assert reason_of(lambda: decode_text(data, LIMITS)) == "not valid UTF-8 text (byte 0xff at offset 14)"


def test_truncated_multibyte_sequence() -> None:
    data = "ok €".encode()[:-1]
    assert reason_of(lambda: decode_text(data, LIMITS)) == "not valid UTF-8 text (byte 0xe2 at offset 3)"


def test_broken_utf16_after_bom() -> None:
    data = codecs.BOM_UTF16_LE + "hi".encode("utf-16-le") + b"\x00\xd8"  # lone high surrogate at the end
    assert reason_of(lambda: decode_text(data, LIMITS)).startswith(
        "not valid UTF-16-LE text (byte 0x00 at offset 6"
    )


def test_utf16_without_bom_is_not_guessed() -> None:
    data = "hello".encode("utf-16-le")
    assert reason_of(lambda: decode_text(data, LIMITS)) == "binary data, not text"


@pytest.mark.parametrize(
    "data",
    [
        b"abc\x00def",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        codecs.BOM_UTF16_LE + "a\x00b".encode("utf-16-le"),
    ],
)
def test_nul_bytes_are_binary(data: bytes) -> None:
    assert reason_of(lambda: decode_text(data, LIMITS)) == "binary data, not text"


@pytest.mark.parametrize(
    "data", [b"", b"   ", b" \n\t\r\n ", codecs.BOM_UTF8, codecs.BOM_UTF8 + b"\n\n", "\u3000".encode()]
)
def test_empty_or_whitespace(data: bytes) -> None:
    assert reason_of(lambda: decode_text(data, LIMITS)) == "empty text"


def test_too_large() -> None:
    limits = MediaLimits(max_file_bytes=1 << 20, max_image_pixels=1, max_text_bytes=10)
    assert decode_text(b"0123456789", limits) == "0123456789"
    reason = reason_of(lambda: decode_text(b"0123456789A", limits))
    assert reason == "text too large: 11 bytes over the limit of 10 bytes"


def test_newlines_normalised_and_outer_whitespace_stripped() -> None:
    data = b"\r\n  # Title\r\n\r\nbody line\rlast  \n\n"
    assert decode_text(data, LIMITS) == "# Title\n\nbody line\nlast"


def test_front_matter_is_kept() -> None:
    data = b"---\ntitle: x\n---\nbody"
    assert decode_text(data, LIMITS) == "---\ntitle: x\n---\nbody"


# --- metadata --------------------------------------------------------------------------------


def test_metadata_markdown_heading() -> None:
    text = "## Cross-modal   search ##\n\nSome body text\nmore."
    meta = text_metadata(text)
    assert meta["title"] == "Cross-modal search"
    assert meta["snippet"] == "## Cross-modal search ## Some body text more."
    assert meta["chars"] == len(text)


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("plain first line\nsecond", "plain first line"),
        ("\n\n  \n   indented start\n", "indented start"),
        ("#\n# \nReal title", "Real title"),
        ("#hashtag is not a heading", "#hashtag is not a heading"),
        ("   ### C# in depth", "C# in depth"),
        ("x", "x"),
    ],
)
def test_metadata_title(text: str, title: str) -> None:
    assert text_metadata(text)["title"] == title


def test_metadata_limits_lengths() -> None:
    words = " ".join(f"word{i}" for i in range(200))
    meta = text_metadata(words + "\n" + words)
    title, snippet = str(meta["title"]), str(meta["snippet"])
    assert len(title) <= 200 and title.endswith("…")
    assert len(snippet) <= 300 and snippet.endswith("…")
    assert words.startswith(title[:-1])
    assert snippet[:-1].split(" ")[-1].startswith("word")  # cut between words


def test_metadata_long_unbroken_text() -> None:
    meta = text_metadata("x" * 1000)
    assert meta["title"] == "x" * 199 + "…"
    assert meta["snippet"] == "x" * 299 + "…"
    assert meta["chars"] == 1000
