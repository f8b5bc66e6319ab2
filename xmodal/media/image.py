"""Decode untrusted image bytes into a fully loaded RGB :class:`PIL.Image.Image`.

Every failure, whatever the bytes, is a :class:`~xmodal.errors.MediaError` with a short reason.
The format is detected from the content (a PNG named ``.jpg`` decodes fine), restricted to
:data:`SUPPORTED_FORMATS`. The pixel count from the header is checked against
``MediaLimits.max_image_pixels`` before any pixel is decoded; Pillow's own global bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``) is left untouched: its warning is silenced while decoding and its
error becomes a ``MediaError`` too. ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never changed, so
truncated files fail.

Warnings are silenced with :func:`warnings.catch_warnings`, which is process-wide and not
thread-safe before Python 3.14: decoding is meant to run in worker processes (or one thread).
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from xmodal.errors import ErrorKind, MediaError
from xmodal.media.types import MediaLimits, looks_like_text

logger = logging.getLogger(__name__)

#: Formats Pillow may detect. Anything else (EPS, PSD, ICO, ...) is "not a recognised image";
#: this also keeps Pillow from ever handing a file to Ghostscript. JPEG covers MPO.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

_EXIF_ORIENTATION = 0x0112
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_SIXTEEN_TO_EIGHT = ((np.arange(65536, dtype=np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"RIFF", "WEBP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_PIL_BOMB_MESSAGE = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+) pixels")


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and facts about the file it came from.

    ``image`` is RGB, fully loaded, EXIF-oriented and possibly reduced by JPEG draft mode.
    ``width`` and ``height`` are the full-resolution size as displayed (after EXIF orientation,
    before any draft reduction); ``format`` is Pillow's name for the detected format
    (``"JPEG"``, ``"PNG"``, ``"MPO"``...), ``mode`` the mode stored in the file (``"CMYK"``,
    ``"P"``, ``"I;16"``...) and ``frames`` the number of frames or pages (1 for still images).
    """

    image: Image.Image
    width: int
    height: int
    format: str
    mode: str
    frames: int


def decode_image(data: bytes, limits: MediaLimits, *, min_side: int | None = None) -> Image.Image:
    """Decode ``data`` into a fully loaded RGB image (see :func:`decode_image_with_info`)."""
    return decode_image_with_info(data, limits, min_side=min_side).image


def decode_image_with_info(data: bytes, limits: MediaLimits, *, min_side: int | None = None) -> DecodedImage:
    """Decode ``data``: first frame, EXIF orientation applied, transparency flattened onto white.

    With ``min_side``, JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose shorter
    side is still at least ``min_side``; other formats are decoded at full size.
    Raises :class:`MediaError` for any bytes that do not decode within ``limits``.
    """
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be at least 1, got {min_side}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
        warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data" and the like
        try:
            return _decode(data, limits, min_side)
        except MediaError:
            raise
        except Image.DecompressionBombError as exc:
            raise MediaError(_pil_bomb_reason(str(exc), limits), ErrorKind.TOO_LARGE) from None
        except MemoryError:
            raise MediaError("image too large: out of memory while decoding", ErrorKind.TOO_LARGE) from None
        except Exception as exc:  # safety net: no other exception may escape for any bytes
            logger.debug("unexpected error decoding an image", exc_info=True)
            raise MediaError(f"truncated or corrupt image: {_describe(exc)}") from None


def _decode(data: bytes, limits: MediaLimits, min_side: int | None) -> DecodedImage:
    if not data:
        raise MediaError("empty file (0 bytes)", ErrorKind.UNSUPPORTED_MEDIA)
    try:
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.UnidentifiedImageError:
        raise MediaError(_unrecognised_reason(data), ErrorKind.UNSUPPORTED_MEDIA) from None
    except (Image.DecompressionBombError, MemoryError):
        raise
    except Exception as exc:
        raise MediaError(_unrecognised_reason(data, _describe(exc)), ErrorKind.UNSUPPORTED_MEDIA) from None

    fmt = img.format or "image"
    mode = img.mode
    width, height = img.size
    if width <= 0 or height <= 0:
        raise MediaError(f"empty image ({width}x{height} pixels)", ErrorKind.UNSUPPORTED_MEDIA)
    pixels = width * height
    if pixels > limits.max_image_pixels:
        raise MediaError(
            f"image too large: {width}x{height} = {_pixels_over_limit(pixels, limits.max_image_pixels)}",
            ErrorKind.TOO_LARGE,
        )

    # Counting frames seeks through GIF and TIFF files, so it is done before the first frame is
    # loaded: seeking a loaded image could swap out the pixels returned below.
    frames = _frame_count(img)
    try:
        if img.tell() != 0:
            img.seek(0)
        if min_side is not None and fmt in ("JPEG", "MPO"):
            # Pillow picks the largest scale s in {8, 4, 2, 1} with s <= min(W // m, H // m),
            # so the shorter side stays >= min_side.
            img.draft("RGB", (min_side, min_side))
        img.load()
    except (MediaError, Image.DecompressionBombError, MemoryError):
        raise
    except Exception as exc:
        raise MediaError(f"truncated or corrupt image: {fmt}: {_describe(exc)}") from None

    loaded_size = img.size
    oriented = _exif_oriented(img)
    if oriented.size != loaded_size:  # rotated by 90 or 270 degrees
        width, height = height, width

    try:
        rgb = _to_rgb(oriented)
    except (MediaError, MemoryError):
        raise
    except Exception as exc:
        raise MediaError(
            f"cannot convert {fmt} image in mode {oriented.mode} to RGB: {_describe(exc)}"
        ) from None
    if rgb.width <= 0 or rgb.height <= 0:
        raise MediaError(f"empty image ({rgb.width}x{rgb.height} pixels)", ErrorKind.UNSUPPORTED_MEDIA)

    return DecodedImage(image=rgb, width=width, height=height, format=fmt, mode=mode, frames=frames)


def _exif_oriented(img: Image.Image) -> Image.Image:
    """``img`` turned upright per its EXIF orientation; ``img`` itself when none or when EXIF is broken."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION)
        if orientation not in (2, 3, 4, 5, 6, 7, 8):
            return img
        return ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception:
        logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(img)
    if img.mode == "La":  # premultiplied; Pillow converts it to LA only
        img = img.convert("LA")
    if img.has_transparency_data:
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return background
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8 bits, scaled rather than clipped.

    16-bit data maps its full range onto 0-255. ``I`` data already in 0-255 is kept and data in
    0-65535 treated as 16-bit; ``F`` data in 0-1 is scaled by 255; anything else is stretched
    from its minimum to its maximum. NaN and infinities become 0.
    """
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        out = _SIXTEEN_TO_EIGHT[arr]
    else:
        values = arr.astype(np.float32)  # float32, in place: 8 bytes a pixel at most
        if img.mode == "F":
            np.copyto(values, 0.0, where=~np.isfinite(values))
        lo = float(values.min()) if values.size else 0.0
        hi = float(values.max()) if values.size else 0.0
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            values *= 255.0
        elif lo >= 0.0 and hi <= 255.0:
            pass
        elif img.mode == "I" and lo >= 0.0 and hi <= 65535.0:
            values *= 255.0 / 65535.0
        elif hi > lo:
            values -= lo
            values *= 255.0 / (hi - lo)
        else:
            values[...] = 0.0
        np.rint(values, out=values)
        np.clip(values, 0.0, 255.0, out=values)
        out = values.astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(out)).convert("RGB")


def _frame_count(img: Image.Image) -> int:
    try:
        return max(1, int(getattr(img, "n_frames", 1)))
    except MemoryError:
        raise
    except Exception:  # a corrupt later frame does not matter: only the first is used
        return 1


def _pil_bomb_reason(message: str, limits: MediaLimits) -> str:
    match = _PIL_BOMB_MESSAGE.search(message)
    if match is None:
        return f"image too large: {message}"
    pixels, pil_limit = int(match.group(1)), int(match.group(2))
    if pixels > limits.max_image_pixels:
        return f"image too large: {_pixels_over_limit(pixels, limits.max_image_pixels)}"
    return f"image too large: {_mpx(pixels)} over Pillow's limit of {_mpx(pil_limit)} (PIL.Image.MAX_IMAGE_PIXELS)"


def _unrecognised_reason(data: bytes, detail: str | None = None) -> str:
    head = data[:512]
    for magic, name in _MAGIC:
        if head.startswith(magic) and (name != "WEBP" or head[8:12] == b"WEBP"):
            return f"not a recognised image: corrupt {name} header" + (f" ({detail})" if detail else "")
    if detail:
        return f"not a recognised image: {detail}"
    if looks_like_text(head):
        return "not a recognised image: the content looks like text"
    return f"not a recognised image: unknown format (starts with {head[:8].hex(' ')})"


def _pixels_over_limit(pixels: int, limit: int) -> str:
    shown, shown_limit = _mpx(pixels), _mpx(limit)
    if shown == shown_limit:  # 100000001 px would read "100 Mpx over the limit of 100 Mpx"
        shown, shown_limit = f"{pixels} px", f"{limit} px"
    return f"{shown} over the limit of {shown_limit}"


def _mpx(pixels: int) -> str:
    if pixels < 10_000:
        return f"{pixels} px"
    mpx = pixels / 1_000_000
    if mpx >= 100:
        return f"{mpx:.0f} Mpx"
    text = f"{mpx:.1f}" if mpx >= 10 else f"{mpx:.2f}"
    return text.rstrip("0").rstrip(".") + " Mpx"


def _describe(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    if len(message) > 200:
        message = message[:199] + "…"
    return message or type(exc).__name__
