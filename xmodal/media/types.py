"""Which files xmodal indexes, and the size limits applied while reading and decoding them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from xmodal.spaces import MODALITIES, modality_for_path  # noqa: F401 - modality_for_path re-exported

if TYPE_CHECKING:  # keep ``import xmodal.media`` free of pydantic
    from xmodal.config import Settings

IMAGE_EXTENSIONS: frozenset[str] = MODALITIES["image"].extensions
TEXT_EXTENSIONS: frozenset[str] = MODALITIES["text"].extensions
AUDIO_EXTENSIONS: frozenset[str] = MODALITIES["audio"].extensions
VIDEO_EXTENSIONS: frozenset[str] = MODALITIES["video"].extensions


@dataclass(frozen=True)
class MediaLimits:
    """Upper bounds on what one file may cost to read and decode."""

    max_file_bytes: int
    max_image_pixels: int
    max_text_bytes: int
    max_audio_seconds: float = 3600.0
    max_video_seconds: float = 3 * 3600.0
    max_video_pixels: int = 7680 * 4320
    video_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("max_audio_seconds", "max_video_seconds", "video_timeout_s"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"MediaLimits.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("max_file_bytes", "max_image_pixels", "max_text_bytes", "max_video_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MediaLimits.{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaLimits:
        """The limits on indexed media configured in ``settings``."""
        return cls(
            max_file_bytes=settings.max_file_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_text_bytes=settings.max_text_bytes,
            max_audio_seconds=settings.max_audio_seconds,
            max_video_seconds=settings.max_video_seconds,
            max_video_pixels=settings.max_video_pixels,
            video_timeout_s=settings.video_timeout_s,
        )

    @classmethod
    def for_queries(cls, settings: Settings) -> MediaLimits:
        """The (smaller) limits on query media, uploaded or named on the command line: a query's cost is
        paid while someone waits, and many may arrive at once."""
        return cls(
            max_file_bytes=min(settings.max_upload_bytes, settings.max_file_bytes),
            max_image_pixels=min(settings.query_max_image_pixels, settings.max_image_pixels),
            max_text_bytes=settings.max_text_bytes,
            max_audio_seconds=min(settings.query_max_audio_seconds, settings.max_audio_seconds),
            max_video_seconds=min(settings.query_max_video_seconds, settings.max_video_seconds),
            max_video_pixels=min(settings.query_max_video_pixels, settings.max_video_pixels),
            video_timeout_s=min(settings.query_video_timeout_s, settings.video_timeout_s),
        )


def modality_for_uri(uri: str) -> str | None:
    """:func:`modality_for_path` of a URI's path: ``https://cdn/x/boot.JPG?w=800`` is an image."""
    from urllib.parse import unquote, urlsplit

    if "://" not in uri:
        return modality_for_path(uri)
    return modality_for_path(unquote(urlsplit(uri).path))


def sniff_modality(data: bytes) -> str | None:
    """``"image"``, ``"audio"`` or ``"video"`` from a file's first bytes (its magic number), or ``None``: for media
    whose URL names no type (``https://cdn/p/123``). Text is never guessed (a manifest gives it inline)."""
    head = data[:16]
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
                        b"MM\x00*")) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if head.startswith((b"fLaC", b"OggS", b"ID3")) or (head[:4] == b"RIFF" and head[8:12] in (b"WAVE", b"RF64")) or (
            head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC")):
        return "audio"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # an MPEG audio frame
        return "audio"
    if head[4:8] == b"ftyp" or head.startswith(b"\x1a\x45\xdf\xa3") or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"  # MP4/MOV, Matroska/WebM, AVI: decoded as audio when it holds no pictures
    return None


def looks_like_text(head: bytes) -> bool:
    """Whether the first bytes of a file read as text (for "not an image/audio file: it is text" reasons)."""
    if b"\x00" in head:
        return False
    text = head.decode("utf-8", errors="replace")
    if text.count("\ufffd") > 1:  # allow one character cut at the end of ``head``
        return False
    return all(ch.isprintable() or ch in "\t\n\r\f\ufffd" for ch in text)


def format_bytes(n: int) -> str:
    """A byte count for people: ``"0 bytes"``, ``"1.5 KiB"``, ``"512 MiB"``."""
    if n < 1024:
        return f"{n} byte" if n == 1 else f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{_three_digits(value)} {unit}"
    raise AssertionError("unreachable")


def format_over_limit(size: int, limit: int) -> str:
    """``"600 MiB over the limit of 512 MiB"``, in exact bytes when the rounded values would look equal."""
    shown, shown_limit = format_bytes(size), format_bytes(limit)
    if shown == shown_limit:
        shown, shown_limit = f"{size} bytes", f"{limit} bytes"
    return f"{shown} over the limit of {shown_limit}"


def _three_digits(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    text = f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".")
