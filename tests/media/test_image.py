"""decode_image on real files of every format and mode it should take, and bytes it must refuse."""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from xmodal.errors import MediaError
from xmodal.media import DecodedImage, MediaLimits, decode_image, decode_image_with_info, read_file

LIMITS = MediaLimits(max_file_bytes=1 << 26, max_image_pixels=100_000_000, max_text_bytes=1 << 20)
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(MediaError) as info:
        call()
    return info.value.reason


def close(a: object, b: tuple[int, ...], tol: int = 12) -> bool:
    assert isinstance(a, tuple), a
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def check_rgb(img: Image.Image, size: tuple[int, int]) -> None:
    assert img.mode == "RGB"
    assert img.size == size
    img.tobytes()  # pixels really are there


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny 1-bit PNG whose IHDR claims ``width`` x ``height`` (CRC fixed): a bomb for free."""
    data = bytearray(encode(Image.new("1", (8, 8)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def sample_rgb(size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def jpeg_bytes() -> bytes:
    return encode(sample_rgb(), "JPEG", quality=90)


@pytest.fixture(scope="module")
def png_bytes() -> bytes:
    return encode(sample_rgb(), "PNG")


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_each_format_decodes(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    decoded = decode_image_with_info(encode(sample_rgb(), fmt), LIMITS)
    check_rgb(decoded.image, (64, 48))
    assert (decoded.width, decoded.height, decoded.format, decoded.frames) == (64, 48, fmt, 1)


def test_png_named_jpg_decodes(tmp_path: Path, png_bytes: bytes) -> None:
    path = tmp_path / "actually_png.jpg"
    path.write_bytes(png_bytes)
    decoded = decode_image_with_info(read_file(str(path), LIMITS), LIMITS)
    assert decoded.format == "PNG"
    check_rgb(decoded.image, (64, 48))


def test_decode_image_returns_plain_image(jpeg_bytes: bytes) -> None:
    img = decode_image(jpeg_bytes, LIMITS)
    check_rgb(img, (64, 48))


def test_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    decoded = decode_image_with_info(data, LIMITS)
    assert decoded.mode == "CMYK"
    check_rgb(decoded.image, (32, 32))
    assert close(decoded.image.getpixel((16, 16)), RED)


def test_16_bit_greyscale_png_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 256, dtype=np.uint16).reshape(16, 16)
    decoded = decode_image_with_info(encode(Image.fromarray(ramp), "PNG"), LIMITS)
    assert decoded.mode.startswith("I")
    arr = np.asarray(decoded.image)
    assert arr[0, 0].tolist() == [0, 0, 0]
    assert arr[-1, -1].tolist() == [255, 255, 255]
    assert 120 <= arr[8, 0, 0] <= 135  # middle of the ramp is mid grey, not white
    assert len(np.unique(arr)) > 200


def test_float_tiff_in_unit_range() -> None:
    decoded = decode_image(encode(Image.new("F", (4, 4), 0.5), "TIFF"), LIMITS)
    assert close(decoded.getpixel((0, 0)), (128, 128, 128), tol=1)


def test_float_tiff_out_of_range_is_stretched_and_nan_is_zero() -> None:
    arr = np.array([[-10.0, 0.0], [990.0, np.nan]], dtype=np.float32)
    out = np.asarray(decode_image(encode(Image.fromarray(arr), "TIFF"), LIMITS))[..., 0]
    assert out.tolist() == [[0, 3], [255, 3]]


def test_32_bit_integer_tiff_with_16_bit_values() -> None:
    decoded = decode_image(encode(Image.new("I", (4, 4), 65535), "TIFF"), LIMITS)
    assert decoded.getpixel((0, 0)) == WHITE


@pytest.mark.parametrize("mode", ["1", "L", "P"])
def test_low_depth_modes(mode: str) -> None:
    img = sample_rgb().convert(mode)
    decoded = decode_image_with_info(encode(img, "PNG"), LIMITS)
    assert decoded.mode == mode
    check_rgb(decoded.image, (64, 48))


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), color) for color in (RED, (0, 255, 0), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    decoded = decode_image_with_info(data, LIMITS)
    assert (decoded.format, decoded.frames) == ("GIF", 3)
    check_rgb(decoded.image, (20, 20))
    assert close(decoded.image.getpixel((10, 10)), RED)


def test_animated_webp_first_frame() -> None:
    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    frames = [Image.new("RGB", (20, 20), color) for color in (BLUE, RED)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True)
    decoded = decode_image_with_info(data, LIMITS)
    assert (decoded.format, decoded.frames) == ("WEBP", 2)
    assert close(decoded.image.getpixel((10, 10)), BLUE)


def test_multi_page_tiff_first_page() -> None:
    pages = [Image.new("RGB", (30, 10), RED), Image.new("RGB", (50, 50), BLUE)]
    decoded = decode_image_with_info(encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]), LIMITS)
    assert (decoded.format, decoded.frames) == ("TIFF", 2)
    check_rgb(decoded.image, (30, 10))
    assert decoded.image.getpixel((5, 5)) == RED


# --- transparency ----------------------------------------------------------------------------


def test_transparent_png_becomes_white() -> None:
    img = Image.new("RGBA", (40, 10), (0, 0, 0, 0))  # fully transparent black
    img.paste((255, 0, 0, 255), (0, 0, 10, 10))  # opaque red
    img.paste((0, 0, 0, 128), (20, 0, 30, 10))  # half-transparent black
    decoded = decode_image_with_info(encode(img, "PNG"), LIMITS)
    assert decoded.mode == "RGBA"
    out = decoded.image
    check_rgb(out, (40, 10))
    assert out.getpixel((5, 5)) == RED
    assert out.getpixel((15, 5)) == WHITE
    assert out.getpixel((35, 5)) == WHITE
    assert close(out.getpixel((25, 5)), (127, 127, 127), tol=2)


def test_la_png_becomes_white() -> None:
    img = Image.new("LA", (8, 8), (0, 0))
    assert decode_image(encode(img, "PNG"), LIMITS).getpixel((4, 4)) == WHITE


def test_palette_transparency_becomes_white() -> None:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    img.paste(0, (0, 0, 4, 8))  # left half: index 0, which is transparent
    for fmt in ("PNG", "GIF"):
        out = decode_image(encode(img, fmt, transparency=0), LIMITS)
        assert out.getpixel((1, 4)) == WHITE, fmt
        assert out.getpixel((6, 4)) == RED, fmt


def test_rgb_colour_key_transparency_becomes_white() -> None:
    img = Image.new("RGB", (8, 8), (10, 20, 30))
    out = decode_image(encode(img, "PNG", transparency=(10, 20, 30)), LIMITS)
    assert out.getpixel((4, 4)) == WHITE


def test_transparent_webp_becomes_white() -> None:
    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    out = decode_image(encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "WEBP", lossless=True), LIMITS)
    assert out.getpixel((4, 4)) == WHITE


# --- EXIF orientation ------------------------------------------------------------------------


def half_red_half_blue(width: int = 40, height: int = 20) -> Image.Image:
    img = Image.new("RGB", (width, height), BLUE)
    img.paste(RED, (0, 0, width // 2, height))
    return img


def test_exif_rotated_jpeg_comes_out_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    data = encode(half_red_half_blue(), "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image_with_info(data, LIMITS)
    check_rgb(decoded.image, (20, 40))
    assert (decoded.width, decoded.height) == (20, 40)
    assert close(decoded.image.getpixel((10, 5)), RED, tol=30)  # the left half is now on top
    assert close(decoded.image.getpixel((10, 35)), BLUE, tol=30)


def test_broken_exif_is_ignored() -> None:
    data = encode(half_red_half_blue(), "JPEG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff garbage")
    check_rgb(decode_image(data, LIMITS), (40, 20))


# --- JPEG draft ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode(half_red_half_blue(2400, 1800), "JPEG", quality=80)


@pytest.mark.parametrize(
    ("min_side", "expected"),
    [(224, (300, 225)), (225, (300, 225)), (226, (600, 450)), (900, (1200, 900)), (1000, (2400, 1800))],
)
def test_jpeg_draft_keeps_short_side_at_least_min_side(
    big_jpeg: bytes, min_side: int, expected: tuple[int, int]
) -> None:
    decoded = decode_image_with_info(big_jpeg, LIMITS, min_side=min_side)
    check_rgb(decoded.image, expected)
    assert min(decoded.image.size) >= min_side
    assert (decoded.width, decoded.height) == (2400, 1800)  # original size, not the draft's


def test_jpeg_draft_is_smaller_than_full_decode(big_jpeg: bytes) -> None:
    full = decode_image(big_jpeg, LIMITS)
    small = decode_image(big_jpeg, LIMITS, min_side=224)
    assert full.size == (2400, 1800)
    assert small.width < full.width and small.height < full.height
    assert close(small.getpixel((10, 100)), RED, tol=30)


def test_jpeg_draft_with_exif_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(half_red_half_blue(1600, 800), "JPEG", exif=exif.tobytes())
    decoded = decode_image_with_info(data, LIMITS, min_side=200)
    assert decoded.image.size == (200, 400)
    assert (decoded.width, decoded.height) == (800, 1600)


def test_min_side_ignored_for_other_formats(png_bytes: bytes) -> None:
    check_rgb(decode_image(png_bytes, LIMITS, min_side=8), (64, 48))


def test_min_side_must_be_positive(jpeg_bytes: bytes) -> None:
    with pytest.raises(ValueError):
        decode_image(jpeg_bytes, LIMITS, min_side=0)


# --- bad input -------------------------------------------------------------------------------


def test_zero_bytes() -> None:
    assert reason_of(lambda: decode_image(b"", LIMITS)) == "empty file (0 bytes)"


def test_random_bytes() -> None:
    data = random.Random(1).randbytes(4096)
    assert reason_of(lambda: decode_image(data, LIMITS)).startswith("not a recognised image: unknown format")


def test_text_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("This is not a picture.\nJust some words.\n")
    reason = reason_of(lambda: decode_image(read_file(str(path), LIMITS), LIMITS))
    assert reason == "not a recognised image: the content looks like text"


def test_unsupported_format_is_not_recognised() -> None:
    for fmt in ("PPM", "ICO", "TGA"):
        reason = reason_of(lambda fmt=fmt: decode_image(encode(sample_rgb(), fmt), LIMITS))  # type: ignore[misc]
        assert reason.startswith("not a recognised image"), fmt


def test_eps_is_never_handed_to_ghostscript() -> None:
    data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert reason_of(lambda: decode_image(data, LIMITS)).startswith("not a recognised image")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_in_half(fmt: str) -> None:
    data = encode(sample_rgb((256, 256)), fmt)
    reason = reason_of(lambda: decode_image(data[: len(data) // 2], LIMITS))
    assert reason.startswith(f"truncated or corrupt image: {fmt}: "), reason


def test_corrupt_header_names_the_format(png_bytes: bytes) -> None:
    reason = reason_of(lambda: decode_image(png_bytes[:20], LIMITS))
    assert reason.startswith("not a recognised image: corrupt PNG header"), reason


@pytest.mark.parametrize("size", [(0, 10), (10, 0)])
def test_zero_size_image(size: tuple[int, int]) -> None:
    with pytest.raises(MediaError):
        decode_image(png_with_header_size(*size), LIMITS)


def test_decompression_bomb_over_our_limit() -> None:
    """A real 5000x5000 PNG of a few kB: refused from the header, before decoding."""
    data = encode(Image.new("1", (5000, 5000)), "PNG", optimize=True)
    assert len(data) < 100_000
    limits = MediaLimits(max_file_bytes=1 << 20, max_image_pixels=1_000_000, max_text_bytes=1)
    reason = reason_of(lambda: decode_image(data, limits))
    assert reason == "image too large: 5000x5000 = 25 Mpx over the limit of 1 Mpx"


def test_decompression_bomb_over_pillows_own_limit() -> None:
    data = png_with_header_size(20000, 20000)
    assert (
        reason_of(lambda: decode_image(data, LIMITS)) == "image too large: 400 Mpx over the limit of 100 Mpx"
    )
    generous = MediaLimits(max_file_bytes=1 << 20, max_image_pixels=10**9, max_text_bytes=1)
    reason = reason_of(lambda: decode_image(data, generous))
    assert reason.startswith("image too large: 400 Mpx over Pillow's limit of")


def test_pillow_bomb_warning_never_escapes() -> None:
    """90 Mpx is over Pillow's warning threshold (89.5 Mpx): no warning, our limit decides."""
    data = png_with_header_size(10000, 9000)
    limits = MediaLimits(max_file_bytes=1 << 20, max_image_pixels=50_000_000, max_text_bytes=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reason = reason_of(lambda: decode_image(data, limits))
    assert reason == "image too large: 10000x9000 = 90 Mpx over the limit of 50 Mpx"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_just_over_the_limit_shows_exact_pixels() -> None:
    limits = MediaLimits(max_file_bytes=1 << 20, max_image_pixels=10_000_000, max_text_bytes=1)
    reason = reason_of(lambda: decode_image(png_with_header_size(10001, 1000), limits))
    assert reason == "image too large: 10001x1000 = 10001000 px over the limit of 10000000 px"


def test_pil_globals_untouched(png_bytes: bytes) -> None:
    before = Image.MAX_IMAGE_PIXELS
    decode_image(png_bytes, LIMITS)
    with pytest.raises(MediaError):
        decode_image(png_with_header_size(20000, 20000), LIMITS)
    assert before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_result_is_a_frozen_dataclass(png_bytes: bytes) -> None:
    decoded = decode_image_with_info(png_bytes, LIMITS)
    assert isinstance(decoded, DecodedImage)
    with pytest.raises(AttributeError):
        decoded.width = 1  # type: ignore[misc]


# --- fuzz ------------------------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:  # flip a few bytes
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del buf[rng.randrange(1, max(2, len(buf))) :]
    elif kind == 2:  # insert junk
        at = rng.randrange(len(buf))
        buf[at:at] = rng.randbytes(rng.randint(1, 64))
    else:  # flip bytes in the header, where sizes and offsets live
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(min(len(buf), 64))] = rng.randrange(256)
    return bytes(buf)


@pytest.mark.parametrize(
    ("fmt", "count"), [("JPEG", 200), ("PNG", 200), ("GIF", 50), ("TIFF", 50), ("WEBP", 50)]
)
def test_fuzzed_images_raise_only_media_error(fmt: str, count: int) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    exif = Image.Exif()
    exif[0x0112] = 3
    params: dict[str, Any] = {"exif": exif.tobytes()} if fmt == "JPEG" else {}
    original = encode(sample_rgb((48, 32)), fmt, **params)
    rng = random.Random(f"xmodal-{fmt}")
    failures = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(count):
            data = mutate(original, rng)
            try:
                decoded = decode_image_with_info(data, LIMITS, min_side=rng.choice([None, 16]))
            except MediaError as exc:
                assert exc.reason and "\n" not in exc.reason
                failures += 1
                continue
            assert decoded.image.mode == "RGB"
            assert decoded.image.width > 0 and decoded.image.height > 0
    assert failures > 0
    assert not [w for w in caught if issubclass(w.category, (UserWarning, RuntimeWarning))]
