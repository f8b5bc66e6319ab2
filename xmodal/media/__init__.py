"""Reading and decoding media files: bytes from disk, RGB images, strict text (audio: ``xmodal.media.audio``,
with the ``audio`` extra).

Every decoding failure is a :class:`xmodal.errors.MediaError` whose ``reason`` is short enough to
record in the catalog. Importing this package does not import torch.
"""

from xmodal.media.image import SUPPORTED_FORMATS, DecodedImage, decode_image, decode_image_with_info
from xmodal.media.read import read_file
from xmodal.media.text import decode_text, text_metadata
from xmodal.media.types import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    TEXT_EXTENSIONS,
    MediaLimits,
    format_bytes,
    modality_for_path,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "SUPPORTED_FORMATS",
    "TEXT_EXTENSIONS",
    "DecodedImage",
    "MediaLimits",
    "decode_image",
    "decode_image_with_info",
    "decode_text",
    "format_bytes",
    "modality_for_path",
    "read_file",
    "text_metadata",
]
