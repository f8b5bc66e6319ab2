"""Decode text files strictly: UTF-8, or UTF-16/UTF-32 when a byte order mark says so."""

from __future__ import annotations

import codecs
import re

from xmodal.errors import ErrorKind, MediaError
from xmodal.media.types import MediaLimits, format_over_limit

TITLE_MAX_CHARS = 200
SNIPPET_MAX_CHARS = 300

# Longest BOM first: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS: tuple[tuple[bytes, str, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32-LE"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32-BE"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16-LE"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16-BE"),
)
_HEADING = re.compile(r"^\s{0,3}#{1,6}(?=\s|$)(.*?)(?:\s+#+)?\s*$")


def decode_text(data: bytes, limits: MediaLimits) -> str:
    """The text in ``data``, newlines normalised to ``\\n`` and surrounding whitespace stripped.

    Without a BOM the bytes must be valid UTF-8; NUL characters mean binary data. Raises
    :class:`MediaError` for invalid, binary, empty or oversized input.
    """
    if len(data) > limits.max_text_bytes:
        raise MediaError(f"text too large: {format_over_limit(len(data), limits.max_text_bytes)}", ErrorKind.TOO_LARGE)

    bom, codec, label = b"", "utf-8", "UTF-8"
    for candidate, candidate_codec, candidate_label in _BOMS:
        if data.startswith(candidate):
            bom, codec, label = candidate, candidate_codec, candidate_label
            break
    if not bom and b"\x00" in data:
        raise MediaError("binary data, not text")

    try:
        text = data[len(bom) :].decode(codec)
    except UnicodeDecodeError as exc:
        offset = len(bom) + exc.start
        raise MediaError(f"not valid {label} text (byte 0x{data[offset]:02x} at offset {offset})") from None

    if "\x00" in text:
        raise MediaError("binary data, not text")
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        raise MediaError("empty text")
    return text


def text_metadata(text: str) -> dict[str, object]:
    """``{"title": ..., "snippet": ..., "chars": ...}`` for a decoded text.

    The title is the first line with visible content, markdown ATX heading marks removed and
    whitespace collapsed (at most :data:`TITLE_MAX_CHARS`); the snippet is the start of the text,
    whitespace collapsed (at most :data:`SNIPPET_MAX_CHARS`, cut at a word where possible).
    """
    title = ""
    for line in text.splitlines():
        match = _HEADING.match(line)
        candidate = " ".join((match.group(1) if match else line).split())
        if candidate:
            title = _shorten(candidate, TITLE_MAX_CHARS)
            break
    snippet = _shorten(" ".join(text.split()), SNIPPET_MAX_CHARS)
    return {"title": title, "snippet": snippet, "chars": len(text)}


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit * 0.8:
        cut = cut[:space]
    return cut.rstrip() + "…"
